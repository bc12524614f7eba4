"""Cost benchmark on an otherwise idle machine: one request end to end, training steps, stacked sampling.

    python benchmarks/timing.py [--out benchmarks/results/timing.json]

1. One request as the pipeline runs it (teacher replay, adapter training, evaluation of every concept at
   `eval.samples_per_concept`), wall time per phase and the process's peak RSS.
2. Training time at the same steps, batch and pool rows: Lethe's adapters (cached teacher targets on forget
   rows, cached encoder, retained rows stopped at the deepest adapter) against `dfr-ft` (every weight, on the
   shared pool with its cached teacher targets), in total (setup included) and per step.
3. Sampling time with 5 requests' adapters stacked against the base alone (the adapters' weights do not
   change the cost, so random ones stand in for trained ones).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.baselines import train_full_finetune  # noqa: E402
from lethe.models.adapter_stack import AdapterStack  # noqa: E402
from lethe.models.generator import Generator  # noqa: E402
from lethe.models.judge import Judge  # noqa: E402
from lethe.models.ode_adapter import ODEAdapter  # noqa: E402
from lethe.models.sampler import sample  # noqa: E402
from lethe.tasks.runtime import configure_torch  # noqa: E402
from lethe.tasks.settings import load_settings  # noqa: E402
from lethe.tasks.steps.distill import distill  # noqa: E402
from lethe.tasks.steps.evaluate import generate_samples  # noqa: E402
from lethe.tasks.steps.train_adapter import (  # noqa: E402
    build_targets,
    ode_config,  # noqa: E402
    train_adapter,
)


def best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.time()
        fn()
        times.append(time.time() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="trouser")
    parser.add_argument("--anchor", default="dress")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=200,
        help="steps timed per method in part 2 (default: the pipeline's train.steps)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "timing.json"))
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="settings file (default: the project's)")
    args = parser.parse_args(argv)
    s = load_settings(args.params)
    configure_torch(s.runtime)
    base = Generator.from_folder(s.paths.base)
    judge = Judge.load(s.paths.judge)
    out = {"threads": torch.get_num_threads(), "command": "python benchmarks/timing.py " + " ".join(argv or [])}

    start = time.time()
    replay = distill(base, AdapterStack(), judge, args.concept, args.anchor, [], s.distill, s.sampling)
    out["request_replay_s"] = round(time.time() - start, 1)

    def train(train_settings):
        return train_adapter(
            base,
            AdapterStack(),
            replay.forget_images,
            replay.retain_images,
            replay.retain_labels,
            args.concept,
            args.anchor,
            s.adapter,
            train_settings,
            "timed",
        )

    result = train(s.train)
    out["request_train_s"] = result.seconds
    start = time.time()
    generate_samples(base, result.stack, s.eval, s.sampling)
    out["request_eval_s"] = round(time.time() - start, 1)
    out["request_total_s"] = round(out["request_replay_s"] + out["request_train_s"] + out["request_eval_s"], 1)
    out["request_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["targets"] = result.targets
    print(json.dumps(out), flush=True)

    def lethe_seconds(steps: int) -> float:
        timed = s.train.model_copy(update={"steps": steps})  # unvalidated on purpose: 0 steps = setup only
        start = time.time()
        train(timed)
        return time.time() - start

    lethe_setup, lethe_total = lethe_seconds(0), lethe_seconds(args.train_steps)  # setup: pool, saliency, cache
    timed = s.override({"train.steps": args.train_steps})
    pool_start = time.time()
    pool = build_targets(
        base,
        AdapterStack(),
        replay.forget_images,
        replay.retain_images,
        replay.retain_labels,
        args.concept,
        args.anchor,
        timed.train,
    )
    pool_seconds = time.time() - pool_start
    start = time.time()
    train_full_finetune(base, pool, timed)
    full_total = time.time() - start + pool_seconds
    out.update(
        train_steps=args.train_steps,
        lethe_setup_s=round(lethe_setup, 2),
        dfr_ft_pool_s=round(pool_seconds, 2),
        lethe_train_s=round(lethe_total, 2),
        dfr_ft_train_s=round(full_total, 2),
        lethe_step_s=round((lethe_total - lethe_setup) / args.train_steps, 4),
        dfr_ft_step_s=round((full_total - pool_seconds) / args.train_steps, 4),
    )
    out["train_ratio"] = round(lethe_total / full_total, 3)
    out["train_step_ratio"] = round(out["lethe_step_s"] / out["dfr_ft_step_s"], 3)
    print(json.dumps(out), flush=True)

    stack = AdapterStack()
    for request in range(5):
        fields = {}
        for target in result.targets:
            fields[target] = ODEAdapter(base.feature_channels(target), ode_config(s.adapter))
            torch.nn.init.normal_(fields[target].field.outer.weight, std=0.01)
        stack.add(f"request-{request + 1}", fields, s.adapter.intensity)
    steps = s.sampling.steps
    out["sample_base_s"] = round(best_of(lambda: sample(base, ["tshirt"], 256, 0, steps)), 3)
    out["sample_5_requests_s"] = round(best_of(lambda: sample(base, ["tshirt"], 256, 0, steps, stack)), 3)
    out["sample_ratio"] = round(out["sample_5_requests_s"] / out["sample_base_s"], 3)
    print(json.dumps(out), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
