"""What adversarial forget rows cost (issue 13): one request's adapter training with and without them.

    python benchmarks/adversarial_cost.py        # -> results/adversarial-cost.json

The first request of the benchmark sequence (trouser -> dress) on the shipped base: the teacher's replay once,
then `train_adapter` with `train.adversarial.rounds` 0 and 3 (the setting `recovery-defence.json` ran with),
everything else as params.yaml ships it. Wall seconds of training only, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.continual import machine, write  # noqa: E402
from lethe.models.adapter_stack import AdapterStack  # noqa: E402
from lethe.models.generator import Generator  # noqa: E402
from lethe.models.judge import Judge  # noqa: E402
from lethe.tasks.runtime import configure_torch  # noqa: E402
from lethe.tasks.settings import load_settings  # noqa: E402
from lethe.tasks.steps.distill import distill  # noqa: E402
from lethe.tasks.steps.train_adapter import train_adapter  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", default="0,3", help="values of train.adversarial.rounds to time")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adversarial-cost.json"))
    args = parser.parse_args(argv)
    settings = load_settings(args.params)
    configure_torch(settings.runtime)
    base, judge = Generator.from_folder(settings.paths.base), Judge.load(settings.paths.judge)
    replay = distill(base, AdapterStack(), judge, "trouser", "dress", [], settings.distill, settings.sampling)
    rows = []
    for rounds in (int(r) for r in args.rounds.split(",")):
        train = settings.override({"train.adversarial.rounds": rounds}).train
        result = train_adapter(
            base,
            AdapterStack(),
            replay.forget_images,
            replay.retain_images,
            replay.retain_labels,
            "trouser",
            "dress",
            settings.adapter,
            train,
            "request-1",
        )
        rows.append(
            {
                "rounds": rounds,
                "train_seconds": result.seconds,
                "adversarial": train.adversarial.model_dump(),
                "steps": train.steps,
                "machine": machine(),
                "command": "python benchmarks/adversarial_cost.py " + " ".join(argv or sys.argv[1:]),
            }
        )
        print(f"rounds {rounds}: {result.seconds} s", flush=True)
    write(rows, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
