"""Continual-unlearning benchmark: every method on the same request sequence, replay sets and evaluation.

    python benchmarks/continual.py --methods lethe,dfr-ft --out benchmarks/results/continual.json

Per step and method it records forget accuracy over every concept forgotten so far, retained accuracy in- and
cross-domain (relative to the base on the same sampling seeds), the share of retained samples judged as the
base judged them, KID on retained concepts, trainable parameters, step wall time, sampling time and peak RSS.
Rows with step 0 hold the base model. The training and sampling code is the pipeline's own (tasks.distill,
tasks.train_adapter, models.sampler); only the baselines' trainers live here.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.baselines import train_full_finetune  # noqa: E402
from models.adapter_stack import AdapterStack  # noqa: E402
from models.concepts import DOMAINS  # noqa: E402
from models.generator import Generator  # noqa: E402
from models.judge import Judge  # noqa: E402
from models.sampler import sample  # noqa: E402
from tasks.distill import distill  # noqa: E402
from tasks.evaluate import kid_score  # noqa: E402
from tasks.prepared_data import load_split  # noqa: E402
from tasks.runtime import configure_torch  # noqa: E402
from tasks.settings import load_params, project_path  # noqa: E402
from tasks.train_adapter import train_adapter  # noqa: E402

DEFAULT_SEQUENCE = "trouser:dress,digit_3:digit_8,bag:pullover,digit_7:digit_1,sandal:sneaker"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sampling_seconds(generator, adapters, steps: int, n: int = 64) -> float:
    start = time.time()
    sample(generator, ["tshirt"], n, seed=0, steps=steps, adapters=adapters)
    return time.time() - start


def measure(generator, adapters, judge, forgotten, real, base_pred, params, n: int, seed: int):
    images, labels = sample(generator, generator.concepts, n, seed, params["sampling"]["steps"], adapters,
                            params["sampling"]["guidance"], params["sampling"]["batch_size"])
    predicted = judge.classify(images)
    acc = {c: float((predicted[labels == i] == i).float().mean()) for i, c in enumerate(generator.concepts)}
    retained = [c for c in generator.concepts if c not in forgotten]
    keep = torch.isin(labels, torch.tensor(generator.labels(retained)))
    unchanged = float((predicted[keep] == base_pred[keep]).float().mean()) if base_pred is not None else 1.0
    real_keep = torch.isin(real[1], torch.tensor(generator.labels(retained)))
    kid = kid_score(judge, real[0][real_keep], images[keep], params["eval"]["kid_subset"], "cpu")
    return acc, predicted, unchanged, kid


def run(methods: list[str], sequence: list[tuple[str, str]], params: dict, n_eval: int, eval_seed: int,
        log=print) -> list[dict]:
    base = Generator.from_folder(project_path(params.get("paths", {}).get("base", "artifacts/base")))
    judge = Judge.load(project_path(params.get("paths", {}).get("judge", "artifacts/judge")))
    real = load_split("test", project_path(params.get("paths", {}).get("prepared", "prepared")))
    base_params = sum(p.numel() for p in base.unet.parameters())
    steps = params["sampling"]["steps"]
    base_acc, base_pred, _, base_kid = measure(base, None, judge, [], real, None, params, n_eval, eval_seed)
    base_time = sampling_seconds(base, None, steps)
    rows = []
    for method in methods:
        rows.append({"method": method, "step": 0, "concept": None, "forget_acc": None, "retain_acc_in": 1.0,
                     "retain_acc_cross": 1.0, "unchanged": 1.0, "kid": base_kid, "trainable_params": 0,
                     "base_params": base_params, "step_seconds": 0.0, "sample_seconds": base_time,
                     "peak_rss_mb": peak_rss_mb(), "accuracy": base_acc})
        generator, stack, forgotten = copy.deepcopy(base), AdapterStack(), []
        for step, (concept, anchor) in enumerate(sequence, start=1):
            started = time.time()
            replay = distill(generator, stack, judge, concept, anchor, forgotten, params)
            if method == "lethe":
                result = train_adapter(generator, stack, replay.forget_images, replay.retain_images,
                                       replay.retain_labels, concept, replay.anchor, params)
                stack, trainable = result.stack, result.trainable_params
            elif method == "dfr-ft":
                generator, trainable, _ = train_full_finetune(generator, replay.forget_images, replay.retain_images,
                                                              replay.retain_labels, concept, replay.anchor, params)
            else:
                raise ValueError(f"unknown method {method!r}")
            forgotten = forgotten + [concept]
            acc, _, unchanged, kid = measure(generator, stack, judge, forgotten, real, base_pred, params, n_eval,
                                             eval_seed)
            seconds = time.time() - started
            retained = [c for c in generator.concepts if c not in forgotten]
            domain = DOMAINS[concept]

            def relative(cs):
                return (sum(acc[c] for c in cs) / max(1e-9, sum(base_acc[c] for c in cs))) if cs else None

            row = {"method": method, "step": step, "concept": concept, "anchor": replay.anchor,
                   "forget_acc": max(acc[c] for c in forgotten),
                   "forget_acc_each": {c: acc[c] for c in forgotten},
                   "retain_acc_in": relative([c for c in retained if DOMAINS[c] == domain]),
                   "retain_acc_cross": relative([c for c in retained if DOMAINS[c] != domain]),
                   "unchanged": unchanged, "kid": kid, "trainable_params": trainable, "base_params": base_params,
                   "step_seconds": round(seconds, 1),
                   "sample_seconds": round(sampling_seconds(generator, stack, steps), 2),
                   "peak_rss_mb": round(peak_rss_mb(), 1), "accuracy": acc}
            rows.append(row)
            log(f"{method} step {step} {concept}->{replay.anchor}: forget {row['forget_acc']:.3f} "
                f"retain in {row['retain_acc_in']:.3f} cross {row['retain_acc_cross']:.3f} "
                f"unchanged {unchanged:.3f} kid {kid:.2f} ({seconds:.0f}s)")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lethe,dfr-ft")
    parser.add_argument("--sequence", default=DEFAULT_SEQUENCE, help="concept:anchor pairs, comma-separated")
    parser.add_argument("--eval-samples", type=int, default=256, help="samples per concept (>= 256 resolves 2%%)")
    parser.add_argument("--eval-seed", type=int, default=777)
    parser.add_argument("--params", help="params file (default: the project's params.yaml)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "continual.json"))
    args = parser.parse_args(argv)
    configure_torch()
    params = load_params(args.params)
    sequence = [tuple(pair.split(":")) for pair in args.sequence.split(",")]
    rows = run(args.methods.split(","), sequence, params, args.eval_samples, args.eval_seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
