"""The embedded world's quality per concept: the judge on the real test split, and the base's samples judged.

    python benchmarks/world.py                                  # the shipped base and judge -> results/world.json
    python benchmarks/world.py --base B --judge J --name before # another pair (e.g. an earlier commit's artefacts)

Rows are keyed by `--name`, so the 20-concept world (the artefacts before the letters) and the 46-concept one sit
side by side; BENCHMARKS.md compares them on the 20 concepts they share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.continual import RESULTS, machine  # noqa: E402
from lethe.models.concepts import DOMAINS  # noqa: E402
from lethe.models.generator import Generator  # noqa: E402
from lethe.models.judge import Judge  # noqa: E402
from lethe.models.sampler import sample  # noqa: E402
from lethe.tasks.runtime import configure_torch  # noqa: E402
from lethe.tasks.settings import load_settings  # noqa: E402
from lethe.tasks.stores.prepared_splits import load_split  # noqa: E402


def per_concept(judge: Judge, images: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict[str, float]:
    """The judge's accuracy on each concept's images (labels index `names`), and what it calls them most."""
    predicted = judge.classify(images)
    out = {}
    for i, name in enumerate(names):
        mine = predicted[labels == i]
        if len(mine):
            out[name] = round(float((mine == judge.concepts.index(name)).float().mean()), 4)
    return out


def domain_means(acc: dict[str, float]) -> dict[str, float]:
    domains = sorted({DOMAINS.get(c, "other") for c in acc})
    return {
        d: round(
            sum(a for c, a in acc.items() if DOMAINS.get(c, "other") == d)
            / sum(DOMAINS.get(c, "other") == d for c in acc),
            4,
        )
        for d in domains
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--base", help="a base generator folder (default: paths.base)")
    parser.add_argument("--judge", help="a judge folder (default: paths.judge)")
    parser.add_argument("--name", default="shipped")
    parser.add_argument("--samples", type=int, default=256, help="samples per concept")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--out", default=str(RESULTS / "world.json"))
    args = parser.parse_args(argv)
    settings = load_settings(args.params)
    configure_torch(settings.runtime)
    base = Generator.from_folder(Path(args.base or settings.paths.base))
    judge = Judge.load(Path(args.judge or settings.paths.judge))
    real_images, real_labels = load_split("test", settings.paths.prepared)
    known = [c for c in judge.concepts]
    keep = real_labels < len(known)  # an earlier judge knows only the first concepts of the split
    real = per_concept(judge, real_images[keep], real_labels[keep], known)
    s = settings.sampling
    images, labels = sample(base, base.concepts, args.samples, args.seed, s.steps, None, s.guidance, s.batch_size)
    generated = per_concept(judge, images, labels, base.concepts)
    row = {
        "name": args.name,
        "concepts": len(base.concepts),
        "samples_per_concept": args.samples,
        "judge_on_real": real,
        "judge_on_real_by_domain": domain_means(real),
        "base_samples_judged": generated,
        "base_samples_by_domain": domain_means(generated),
        "base_samples_mean": round(sum(generated.values()) / len(generated), 4),
        "machine": machine(),
        "command": "python benchmarks/world.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    rows = [r for r in (json.loads(out.read_text()) if out.is_file() else []) if r["name"] != args.name]
    out.write_text(json.dumps(rows + [row], indent=1) + "\n")
    print(json.dumps({k: row[k] for k in ("name", "judge_on_real_by_domain", "base_samples_by_domain")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
