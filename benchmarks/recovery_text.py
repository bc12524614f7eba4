"""The recovery audit on the text-to-image model (issue 13): can textual inversion bring a forgotten concept back?

    python benchmarks/recovery_text.py                          # the base, then lethe on the text sequence
    python benchmarks/recovery_text.py --methods lethe,dfr-ft --requests 2
    python benchmarks/recovery_text.py --requests 1 --set recovery.steps=3 --results /tmp/smoke   # a smoke run

The embedded text-to-image model (`--params`, default params.text-to-image.yaml) is attacked as it ships, where
the attack must succeed for the audit to mean anything, then each method runs the text benchmark's sequence
(`continual_text.TEXT_SEQUENCE`, its training code and tuned setting from `--tuned`) and its final model is
attacked. Per forgotten concept: the judge's accuracy on plain samples of its prompts, and on samples drawn with a
token embedding optimised on its images, which is the pipeline's own audit (`tasks/steps/recovery_audit.py`:
the same attacker images, attack, seeds and budget, `recovery` in the settings), with the first and last loss
and where the images came from. There is no resurrection row: `resurrect` fine-tunes a class-conditional UNet.
Rows -> results/recovery-text.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.continual import machine, parse_overrides, write  # noqa: E402
from benchmarks.continual_text import TEXT_SEQUENCE, TextBench  # noqa: E402
from benchmarks.measures import sequence_of  # noqa: E402
from benchmarks.recovery import EVAL_SEED, judged, run_sequence  # noqa: E402
from lethe.models.recovery_attack import recover_token_embedding, sample_with_token_embedding  # noqa: E402
from lethe.models.text_generator import is_text_to_image_folder  # noqa: E402
from lethe.tasks.runtime import configure_torch  # noqa: E402
from lethe.tasks.settings import load_settings  # noqa: E402
from lethe.tasks.steps.recovery_audit import ATTACK_SEED, SAMPLE_SEED, attacker_latents, attacker_source  # noqa: E402
from lethe.tasks.stores.prepared_splits import load_split  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def audit(bench: TextBench, generator, stack, forgotten: list[str], train, settings) -> list[dict]:
    """Plain and attacked accuracy of every concept in `forgotten` on (generator, stack)."""
    r, sp = settings.recovery, settings.sampling
    rows = []
    for concept in forgotten:
        started = time.time()
        plain, _ = generator.sample_concepts(
            [concept], r.samples, EVAL_SEED, sp.steps, stack, sp.guidance, sp.batch_size
        )
        latents = attacker_latents(generator, concept, train, r, sp)
        vector, losses = recover_token_embedding(generator, stack, latents, r.steps, r.lr, r.batch_size, ATTACK_SEED)
        attacked = sample_with_token_embedding(
            generator, stack, vector, r.samples, SAMPLE_SEED, sp.steps, sp.guidance, sp.batch_size
        )
        row = {
            "concept": concept,
            "plain": judged(bench, plain, concept),
            "attack": judged(bench, attacked, concept),
            "attack_loss": [round(losses[0], 5), round(losses[-1], 5)],
            "images": attacker_source(generator, concept, train),
            "seconds": round(time.time() - started, 1),
        }
        rows.append(row)
        print(f"  {concept}: plain {row['plain']['acc']:.3f} attack {row['attack']['acc']:.3f}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lethe", help="comma-separated: lethe, dfr-ft")
    parser.add_argument("--sequence", default=TEXT_SEQUENCE)
    parser.add_argument("--requests", type=int, default=None, help="run only the first N requests")
    parser.add_argument("--params", default=str(ROOT / "params.text-to-image.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="repeatable")
    parser.add_argument("--tuned", default=str(RESULTS / "tuned-text.json"), help="each method's tuned setting")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    extra = parse_overrides(args.set)
    settings = load_settings(args.params).override(extra)
    if not is_text_to_image_folder(settings.generator.folder):
        raise SystemExit(f"{args.params} is not a text-to-image settings file; benchmarks/recovery.py is for the other")
    configure_torch(settings.runtime)
    sequence = sequence_of(args.sequence)[: args.requests]
    bench = TextBench(settings, sequence, 1, 1, EVAL_SEED)  # its own base evaluation is not used here: n = 1
    forgotten = [c for c, _ in sequence]
    misnamed = [c for c in forgotten if bench.base.concepts.index(c) != bench.judge.concepts.index(c)]
    if misnamed:  # `judged` scores by the generator's concept index
        raise SystemExit(f"the generator and the judge order {misnamed} differently")
    train = load_split("train", settings.paths.prepared)
    tuned_path = Path(args.tuned)
    tuned = json.loads(tuned_path.read_text()) if tuned_path.is_file() else {}
    info = {"machine": machine(), "command": "python benchmarks/recovery_text.py " + " ".join(argv or sys.argv[1:])}
    info["sequence"] = args.sequence
    budget = settings.recovery.model_dump()
    print("base", flush=True)
    out = [
        {"method": "base", "anchor": None, **row, "budget": budget, **info}
        for row in audit(bench, bench.base, None, forgotten, train, settings)
    ]
    for method in args.methods.split(","):
        config = {**tuned.get(method, {}).get("config", {}), **extra}
        s = settings.override({**config, "train.seed": 0})
        generator, stack, done, anchors = run_sequence(bench, method, sequence, s)
        for row in audit(bench, generator, stack, done, train, s):
            out.append(
                {"method": method, "config": config, "anchor": anchors[row["concept"]], **row, "budget": budget, **info}
            )
    write(out, Path(args.results) / "recovery-text.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
