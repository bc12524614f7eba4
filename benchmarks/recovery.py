"""The recovery audit (issue 13): after a request sequence, can a white-box attacker bring a forgotten concept back?

    python benchmarks/recovery.py                       # lethe and dfr-ft on the five-request sequence
    python benchmarks/recovery.py --methods lethe --requests 2
    python benchmarks/recovery.py --methods lethe --set train.adversarial.rounds=3 --label lethe-adv

Per method, the sequence is run with the tuned setting (`results/tuned.json`, when there is one), then for every
forgotten concept of the final model: the judge's accuracy on its plain samples, on samples drawn with a class
embedding optimised on real images of it (`models.recovery_attack.recover_embedding`), and on plain samples after
a short fine-tune on retained images only (`resurrect`). The same attack runs on the base, where it must succeed
for the audit to mean anything. The budget is `recovery` in params.yaml. Rows -> results/recovery.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.continual import DEFAULT_SEQUENCE, Bench, machine, parse_overrides, write  # noqa: E402
from benchmarks.measures import sequence_of, wilson  # noqa: E402
from lethe.models.adapter_stack import AdapterStack  # noqa: E402
from lethe.models.recovery_attack import recover_embedding, resurrect, sample_with_embedding  # noqa: E402
from lethe.tasks.runtime import configure_torch  # noqa: E402
from lethe.tasks.settings import load_settings  # noqa: E402
from lethe.tasks.stores.prepared_splits import load_split  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EVAL_SEED = 31337  # sampling seed of every judged sample here


def judged(bench: Bench, images: torch.Tensor, concept: str) -> dict:
    label = bench.base.concepts.index(concept)
    hits = int((bench.judge.classify(images) == label).sum())
    low, high = wilson(hits, len(images))
    return {"acc": round(hits / len(images), 4), "low": round(low, 4), "high": round(high, 4), "n": len(images)}


def audit(bench: Bench, generator, stack, forgotten: list[str], train, settings) -> list[dict]:
    """Plain, attacked and resurrected accuracy of every concept in `forgotten` on (generator, stack)."""
    r, sampling = settings.recovery, settings.sampling
    images, labels = train
    rows = []
    for concept in forgotten:
        label = bench.base.concepts.index(concept)
        started = time.time()
        plain = generator.sample_concepts([concept], r.samples, EVAL_SEED, sampling.steps, stack, sampling.guidance)[0]
        own = images[labels == label][: r.images]
        vector, losses = recover_embedding(generator, stack, own, r.steps, r.lr, r.batch_size, seed=0)
        attacked = sample_with_embedding(
            generator, stack, vector, r.samples, EVAL_SEED, sampling.steps, sampling.guidance
        )
        row = {
            "concept": concept,
            "plain": judged(bench, plain, concept),
            "attack": judged(bench, attacked, concept),
            "attack_loss": [round(losses[0], 5), round(losses[-1], 5)],
        }
        if stack is not None or generator is not bench.base:  # resurrection means nothing on the base
            keep = ~torch.isin(labels, torch.tensor(bench.base.labels(forgotten)))
            tuned = resurrect(
                generator, stack, images[keep], labels[keep], r.resurrect_steps, r.resurrect_lr, r.batch_size, seed=0
            )
            again = tuned.sample_concepts([concept], r.samples, EVAL_SEED, sampling.steps, stack, sampling.guidance)
            row["resurrected"] = judged(bench, again[0], concept)
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        print(f"  {concept}: plain {row['plain']['acc']:.3f} attack {row['attack']['acc']:.3f}", flush=True)
    return rows


def run_sequence(bench, method: str, sequence, settings):
    """Every request of `sequence` for `method` on `bench` (either kind's bench: its `train_step`); returns the
    final (generator, stack or None when empty, forgotten concepts, {concept: anchor})."""
    generator, stack, done, anchors = bench.base, AdapterStack(), [], {}
    for step, (concept, anchor) in enumerate(sequence, start=1):
        generator, stack, *_, anchor, _ = bench.train_step(
            method, generator, stack, concept, anchor, done, settings, name=f"step-{step}"
        )
        done.append(concept)
        anchors[concept] = anchor
        print(f"{method} step {step}: {concept} -> {anchor}", flush=True)
    return generator, stack if len(stack) else None, done, anchors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lethe,dfr-ft")
    parser.add_argument("--sequence", default=DEFAULT_SEQUENCE)
    parser.add_argument("--requests", type=int, default=None, help="run only the first N requests")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting on top of tuned")
    parser.add_argument("--label", default=None, help="the method's name in the rows (default: the method)")
    parser.add_argument("--no-base", action="store_true", help="skip the attack on the base")
    parser.add_argument("--out", default="recovery.json", help="file name under --results")
    parser.add_argument("--retain-samples", type=int, default=32, help="samples per concept for retention")
    args = parser.parse_args(argv)
    extra = parse_overrides(args.set)
    settings = load_settings(args.params)
    configure_torch(settings.runtime)
    sequence = sequence_of(args.sequence)[: args.requests]
    n = args.retain_samples  # retention of the final model, against the base's (the defence must not cost it)
    bench = Bench(settings, sequence, n, n, EVAL_SEED, measure_base=True)
    train = load_split("train", settings.paths.prepared)
    tuned_path = Path(args.results) / "tuned.json"
    tuned = json.loads(tuned_path.read_text()) if tuned_path.is_file() else {}
    info = {"machine": machine(), "command": "python benchmarks/recovery.py " + " ".join(argv or sys.argv[1:])}
    budget = settings.recovery.model_dump()
    out = []
    forgotten = [c for c, _ in sequence]
    if not args.no_base:
        print("base", flush=True)
        for row in audit(bench, bench.base, None, forgotten, train, settings):
            out.append({"method": "base", "anchor": None, **row, "budget": budget, **info})
    for method in args.methods.split(","):
        config = {**tuned.get(method, {}).get("config", {}), **extra}
        s = settings.override({**config, "train.seed": 0})
        generator, stack, done, anchors = run_sequence(bench, method, sequence, s)
        final = bench.eval.row(generator, stack, done, None)
        kept = {k: final[k] for k in ("retain_acc", "unchanged", "kid_ratio")}
        print(f"{method}: retained {kept}", flush=True)
        for row in audit(bench, generator, stack, done, train, s):
            out.append(
                {
                    "method": args.label or method,
                    "config": config,
                    "anchor": anchors[row["concept"]],
                    **row,
                    "final_model": kept,
                    "budget": budget,
                    **info,
                }
            )
    write(out, Path(args.results) / args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
