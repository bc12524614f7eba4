"""Choosing the consolidation setting on a validation stack (never the test sequence's).

    python benchmarks/consolidation_validation.py h16-1500 h64-3000 h64-g2-3000 persite-h16-1500
    python benchmarks/consolidation_validation.py --out benchmarks/results/consolidation-validation-46.json \
        h64-3000 h64-3000-f50 h64-3000-r8192      # the fold's rows, in the 46-concept world (issue 14)

Builds an 8-request validation stack (the test sequence's first eight pairs reversed: concept and anchor swap),
folds it under each named setting and judges the fold against the unfolded stack: forget accuracy of each of the
8 forgotten concepts (128 samples each), mean retained accuracy (64 each) and the sampling wall-time ratio to the
base (256 samples, median of 5 back-to-back pairs). Rule, fixed before the run: the cheapest setting (sampling
ratio) whose fold passes the pipeline's gates against the unfolded stack (every forgotten concept at most
`gates.forget_acc_max`, retained at least `gates.retain_ratio_min` of the stack's). Writes
results/consolidation-validation.json or --out (settings already measured are kept; the stack is cached in
/tmp, one per output file). The first file was measured in the 20-concept world.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lethe.models.adapter_stack import AdapterStack  # noqa: E402
from lethe.models.generator import Generator  # noqa: E402
from lethe.models.judge import Judge  # noqa: E402
from lethe.models.sampler import sample  # noqa: E402
from lethe.tasks.settings import load_settings  # noqa: E402
from lethe.tasks.steps.consolidate import consolidate  # noqa: E402
from lethe.tasks.steps.distill import distill  # noqa: E402
from lethe.tasks.steps.train_adapter import train_adapter  # noqa: E402

VALIDATION = [
    ("pullover", "coat"),
    ("digit_4", "digit_9"),
    ("sneaker", "sandal"),
    ("digit_1", "digit_7"),
    ("tshirt", "shirt"),
    ("digit_6", "digit_5"),
    ("dress", "coat"),
    ("digit_8", "digit_3"),
]
CONFIGS = {
    "h16-1500": {"hidden": 16, "steps": 1500},
    "h64-3000": {"hidden": 64, "steps": 3000},
    "h64-g2-3000": {"hidden": 64, "steps": 3000, "grid_steps": 2},
    "persite-h16-1500": {"site": None, "hidden": 16, "steps": 1500},
    "h64-3000-f50": {"hidden": 64, "steps": 3000, "forgotten_share": 0.5},
    "h64-3000-r8192": {"hidden": 64, "steps": 3000, "rows": 8192},
}
OUT = ROOT / "benchmarks" / "results" / "consolidation-validation.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(CONFIGS), help="the fold settings to measure")
    parser.add_argument("--out", default=str(OUT), help="results file (settings already in it are kept)")
    args = parser.parse_args(argv)
    names, out = args.names, Path(args.out)
    cached = Path(f"/tmp/lethe-{out.stem}-stack")
    s = load_settings(ROOT / "params.yaml")
    g, judge = Generator.from_folder(s.paths.base), Judge.load(s.paths.judge)
    if cached.exists():
        stack = AdapterStack.load(cached)
    else:
        stack, forgotten = AdapterStack(), []
        for i, (c, a) in enumerate(VALIDATION, 1):
            r = distill(g, stack, judge, c, a, forgotten, s.distill, s.sampling)
            stack = train_adapter(
                g, stack, r.forget_images, r.retain_images, r.retain_labels, c, a, s.adapter, s.train, f"request-{i}"
            ).stack
            forgotten.append(c)
        stack.save(cached)
    forgotten = [c for c, _ in VALIDATION]
    retained = [c for c in g.concepts if c not in forgotten]

    def accuracy(adapters) -> dict:
        out = {}
        for concepts, n in ((forgotten, 128), (retained, 64)):
            images, labels = sample(g, concepts, n, 777, s.sampling.steps, adapters, 1.0, 256)
            predicted = judge.classify(images)
            for c in concepts:
                i = g.concepts.index(c)
                out[c] = float((predicted[labels == i] == i).float().mean())
        return {**{c: out[c] for c in forgotten}, "retain": statistics.mean(out[c] for c in retained)}

    def ratio(adapters, repeats: int = 5) -> float:
        ratios = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sample(g, ["tshirt"], 256, 0, s.sampling.steps, None, 1.0, 256)
            t1 = time.perf_counter()
            sample(g, ["tshirt"], 256, 0, s.sampling.steps, adapters, 1.0, 256)
            ratios.append((time.perf_counter() - t1) / (t1 - t0))
        return statistics.median(ratios)

    results = json.loads(out.read_text()) if out.is_file() else {}
    if "stack" not in results:
        results["stack"] = {"acc": accuracy(stack), "ratio": ratio(stack)}
    for name in names:
        config = s.consolidate.model_copy(update=CONFIGS[name])
        r = consolidate(g, stack, "c", s.adapter, config, s.sampling, forgotten=tuple(forgotten))
        fold = r.consolidated
        results[name] = {
            "acc": accuracy(fold.stack),
            "ratio": ratio(fold.stack),
            "unexplained": fold.unexplained,
            "seconds": r.seconds,
        }
        print(name, results[name], flush=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
