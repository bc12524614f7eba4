"""Tuning under the pre-registered protocol (BENCHMARKS.md, "Protocol"): every method gets the same number of
configurations of its own strength knobs, run on the validation sequence only, and one rule picks each
method's setting; the test sequence is then run once per method with that setting.

    python benchmarks/tune.py all            # the whole protocol, in order: every part below, every method
    python benchmarks/tune.py validate --methods lethe,dfr-ft     # -> results/tuning.json, results/tuned.json
    python benchmarks/tune.py test --methods lethe,dfr-ft --seeds 0,1,2   # -> results/test.json
    python benchmarks/tune.py anchors        # Lethe on validation under each anchor rule -> results/anchors.json
    python benchmarks/tune.py dial           # intensity dial of lethe, residual, lethe-t -> results/dial.json
    python benchmarks/tune.py grid           # ODE adapters on one step vs their trained grid -> results/grid.json
    python benchmarks/tune.py test --methods retrain --seeds 0,1,2  # the base recipe in full, without them

The rule (declared before any run): among a method's configurations with no collapsed and no gate-rejected
step on the validation sequence, and whose final forget accuracy on every concept forgotten so far is within
max(2%, that request's anchor confusion) + 3 points of sampling slack, the one with the highest final
retained accuracy (ties, from the second round on: the lower worst final forget accuracy, then the earlier
configuration); if none qualifies, among configurations with no collapsed step that keep >= 95% of the base's
retained accuracy (the pipeline's retain gate), the lowest worst final forget accuracy; if none does, the
highest retention.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.continual import TEN_SEQUENCE, Bench, machine, write  # noqa: E402
from benchmarks.measures import sequence_of  # noqa: E402
from lethe.tasks.runtime import configure_torch  # noqa: E402
from lethe.tasks.settings import load_settings  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# Validation and test forget disjoint concepts and are judged on different evaluation seeds.
VALIDATION = "pullover:,digit_4:"
VALIDATION_SEED = 4242
TEST = TEN_SEQUENCE  # the ten-request sequence; `--requests N` runs its first N (a step never sees later ones)
TEST_SEED = 777
SLACK = 0.03
LETHE = [
    {"adapter.intensity": 1.0},
    {"adapter.intensity": 1.5},
    {"adapter.intensity": 2.0},
    {"adapter.intensity": 1.5, "train.steps": 400},  # twice the training steps (lr 3e-3 is the default)
]
# The same budget for every method: four configurations of its own strength knobs.
GRIDS: dict[str, list[dict]] = {
    "lethe": LETHE,
    "residual": [  # h + s * f(h): one step in training and sampling, no path for the trajectory terms
        {**r, "adapter.intensity": s}
        for s in (1.0, 1.5, 2.0)
        for r in [{"adapter.step_size": 1.0, "train.weights.smooth": 0.0, "train.weights.start": 0.0}]
    ]
    + [
        {
            "adapter.step_size": 1.0,
            "train.weights.smooth": 0.0,
            "train.weights.start": 0.0,
            "adapter.intensity": 1.5,
            "train.steps": 400,
        }
    ],
    "lethe-t": [{**c, "adapter.time_dependent": True} for c in LETHE],  # the field sees t
    "dfr-ft": [
        {"baselines.dfr_ft.lr": lr, "baselines.dfr_ft.drift_l2": l2} for lr in (1e-4, 3e-4) for l2 in (1e-2, 1e-3)
    ],
    "fade-lora": [{"baselines.fade_lora.lr": lr, "baselines.fade_lora.rank": r} for lr in (1e-3, 3e-3) for r in (2, 4)],
    "esd": [  # the conditioning-path variant at three learning rates (ESD's own is 1e-5), ESD-u as the fourth
        {"baselines.esd.variant": "conditioning", "baselines.esd.lr": lr} for lr in (1e-5, 1e-4, 1e-3)
    ]
    + [{"baselines.esd.variant": "u", "baselines.esd.lr": 1e-5}],
}
DIAL = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # x the trained horizon: 1 is as trained, above 1 extrapolates
DIAL_METHODS = ("lethe", "residual", "lethe-t")
GRID_METHODS = ("lethe", "lethe-t")  # the ODE adapters (residual has one step in training too)
RETRAIN = "retrain"  # no strength knob to tune: the base recipe, every step, without the forgotten concepts
TRAINER = {"residual": "lethe", "lethe-t": "lethe"}  # variants trained by another method's code


def floors(bench: Bench) -> dict[str, float]:
    """Per request with a named anchor: the judge's rate of calling the anchor's base samples the concept."""
    return {r["concept"]: r["floor"] for r in bench.run_floors(log=lambda *_: None)}


def final_ok(rows: list[dict], floor_of: dict[str, float]) -> bool:
    last = rows[-1]
    if any(r.get("collapsed") or r.get("rejected") for r in rows if r["step"] > 0):
        return False
    return all(acc <= max(0.02, floor_of.get(c, 0.0)) + SLACK for c, acc in last["forget_acc_each"].items())


def worst_forget(rows: list[dict]) -> float:
    return max(rows[-1]["forget_acc_each"].values())


def choose(runs: list[tuple[dict, list[dict]]], floor_of: dict[str, float]) -> int:
    """Index of the configuration the rule picks."""
    ok = [i for i, (_, rows) in enumerate(runs) if final_ok(rows, floor_of)]
    if ok:
        return min(ok, key=lambda i: (-runs[i][1][-1]["retain_acc"], worst_forget(runs[i][1]), i))
    kept = [
        i
        for i, (_, rows) in enumerate(runs)
        if rows[-1]["retain_acc"] >= 0.95 and not any(r.get("collapsed") for r in rows if r["step"] > 0)
    ]
    if kept:
        return min(kept, key=lambda i: (runs[i][1][-1]["forget_acc"], -runs[i][1][-1]["retain_acc"]))
    return max(range(len(runs)), key=lambda i: runs[i][1][-1]["retain_acc"])


def resolved(bench: Bench, sequence: list[tuple[str, str | None]], rule: str | None = None):
    """The sequence with automatic anchors chosen once, by the rule in the settings (or `rule`), on the base:
    every method and configuration then forgets onto the same anchors and is held to the same floors."""
    from lethe.models.adapter_stack import AdapterStack
    from lethe.tasks.steps.distill import distill

    s, out, forgotten = bench.settings, [], []
    if rule:
        s = s.override({"distill.anchor_rule": rule})
    for concept, anchor in sequence:
        if anchor is None:
            anchor = distill(bench.base, AdapterStack(), bench.judge, concept, None, forgotten, s.distill, s.sampling)
            anchor = anchor.anchor
        out.append((concept, anchor))
        forgotten.append(concept)
    return out


def compare_anchors(bench: Bench, settings, tuned: dict, results: Path, info: dict) -> int:
    """What the automatic anchor's rule costs: Lethe (its tuned setting) on the validation sequence with the
    anchors each rule picks, with each request's anchor confusion -> results/anchors.json."""
    if "lethe" not in tuned:
        raise SystemExit("lethe has no tuned setting: run `python benchmarks/tune.py validate` first")
    automatic = list(bench.sequence)
    rows = []
    for rule in ("least-confused", "nearest"):
        bench.settings = settings
        bench.sequence = resolved(bench, automatic, rule)
        floor_of = floors(bench)
        bench.settings = settings.override(tuned["lethe"]["config"])
        for r in bench.run_method("lethe", 0, name=f"lethe/{rule}"):
            rows.append(dict(r, anchor_rule=rule, floors=floor_of, config=tuned["lethe"]["config"], **info))
        write(rows, results / "anchors.json")
    return 0


def trained_first(bench: Bench, settings, tuned: dict, method: str, name: str):
    """(settings, concept, replay, result): `method`'s adapter, its tuned setting, on the sequence's first
    request."""
    if method not in tuned:
        raise SystemExit(f"{method} has no tuned setting: run `python benchmarks/tune.py validate` first")
    s = settings.override(tuned[method]["config"])
    concept, replay = bench.first_request(s)
    return s, concept, replay, bench.train_first(concept, replay, s, name)


def run_dial(bench: Bench, settings, tuned: dict, results: Path, info: dict, methods) -> int:
    """Each adapter variant trained once (its tuned setting, the validation sequence's first request), then
    evaluated at every intensity of DIAL: forget accuracy, the judge's probability of the concept, drawn as
    anchor and retention against the knob -> results/dial.json."""
    rows = []
    for method in methods:
        s, concept, replay, result = trained_first(bench, settings, tuned, method, "dial")
        for intensity in DIAL:
            result.stack.set_intensity(result.name, intensity)
            columns = bench.eval.row(bench.base, result.stack, [concept], concept, {concept: replay.anchor})
            rows.append(
                dict(
                    method=method,
                    intensity=intensity,
                    extrapolated=intensity > 1.0,
                    concept=concept,
                    anchor=replay.anchor,
                    config=tuned[method]["config"],
                    **columns,
                    **info,
                )
            )
            print(
                f"dial {method} x{intensity}: forget {columns['forget_acc']:.3f} prob {columns['forget_prob']:.4f} "
                f"as anchor {columns['drawn_as_anchor']} retain {columns['retain_acc']}"
            )
            write(rows, results / "dial.json")
    return 0


def deploy_on(stack, name: str, steps: int | None) -> None:
    """Integrate adapter `name` on `steps` solver steps at sampling (None: its training grid)."""
    for target in stack.slots[name].targets:
        field = stack.field(name, target)
        field.config = dataclasses.replace(field.config, sampling_steps=steps)


def run_grid(benches: dict, settings, tuned: dict, results: Path, info: dict, methods) -> int:
    """Each ODE adapter trained once (its tuned setting, the first request of each sequence), then evaluated
    deployed on one step (params.yaml's `adapter.sampling_steps`) and on its trained grid -> results/grid.json."""
    rows = []
    for sequence, bench in benches.items():
        for method in methods:
            s, concept, replay, result = trained_first(bench, settings, tuned, method, "grid")
            trained = next(iter(result.stack.adapters[result.name].values())).config.steps
            for deployment, steps in (("deployed", s.adapter.sampling_steps), ("trained grid", None)):
                deploy_on(result.stack, result.name, steps)
                started = time.time()
                columns = bench.eval.row(bench.base, result.stack, [concept], concept, {concept: replay.anchor})
                rows.append(
                    dict(
                        method=method,
                        sequence=sequence,
                        deployment=deployment,
                        solver_steps=steps or trained,
                        solver=s.adapter.solver,
                        intensity=s.adapter.intensity,
                        concept=concept,
                        anchor=replay.anchor,
                        config=tuned[method]["config"],
                        eval_seconds=round(time.time() - started, 1),
                        **columns,
                        **info,
                    )
                )
                print(
                    f"grid {sequence} {method} {deployment} ({steps or trained} steps): forget "
                    f"{columns['forget_acc']:.3f} as anchor {columns['drawn_as_anchor']} retain {columns['retain_acc']}"
                )
                write(rows, results / "grid.json")
    return 0


def run_all(argv: list[str]) -> int:
    """The protocol from a fresh clone, in its declared order: validation of every method, the test sequence
    once per method with 3 training seeds (retrain's seed is the base recipe's), then the dial, the grid and
    the anchor comparison. `argv` holds the options common to every part (--params, --results, ...)."""
    test = ",".join(GRIDS)  # the ablations residual and lethe-t too: what the ODE adds is a test-sequence claim
    for part in (
        ["validate"],
        ["test", "--methods", test, "--seeds", "0,1,2"],  # ~1 h per method on 2 CPU cores
        ["test", "--methods", RETRAIN, "--seeds", "0,1,2"],  # the base recipe's seed
        ["dial"],
        ["grid"],
        ["anchors"],
    ):
        if main(part + argv) != 0:
            return 1
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["all"]:
        return run_all(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["all", "validate", "test", "anchors", "dial", "grid"])
    parser.add_argument("--methods", default=",".join(GRIDS), help=f"default: all ({', '.join(GRIDS)})")
    parser.add_argument("--seeds", default="0", help="training seeds (test)")
    parser.add_argument("--forget-samples", type=int, default=256)
    parser.add_argument("--retain-samples", type=int, default=32)
    parser.add_argument("--requests", type=int, help="run only the first N requests of the sequence")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="settings file (default: the project's)")
    args = parser.parse_args(argv)
    settings = load_settings(args.params)
    configure_torch(settings.runtime)
    results = Path(args.results)
    validate = args.part == "validate"
    text, seed = (TEST, TEST_SEED) if args.part == "test" else (VALIDATION, VALIDATION_SEED)
    requests = 1 if args.part in ("dial", "grid") and args.requests is None else args.requests  # dial, grid: one
    sequence = sequence_of(text)[:requests]
    bench = Bench(settings, sequence, args.forget_samples, args.retain_samples, seed, results / "parts")
    if args.part != "anchors":  # the anchor comparison resolves the automatic anchors under each rule itself
        bench.sequence = resolved(bench, bench.sequence)
        floor_of = floors(bench)
    info = {"machine": machine(), "command": "python benchmarks/tune.py " + " ".join(argv)}
    tuned_path = results / "tuned.json"
    tuned = json.loads(tuned_path.read_text()) if tuned_path.is_file() else {}
    if args.part == "anchors":
        return compare_anchors(bench, settings, tuned, results, info)
    if args.part == "dial":
        methods = DIAL_METHODS if args.methods == ",".join(GRIDS) else args.methods.split(",")
        return run_dial(bench, settings, tuned, results, info, methods)
    if args.part == "grid":
        methods = GRID_METHODS if args.methods == ",".join(GRIDS) else args.methods.split(",")
        test = Bench(settings, sequence_of(TEST)[:1], args.forget_samples, args.retain_samples, TEST_SEED)
        test.sequence = resolved(test, test.sequence)
        return run_grid({"validation": bench, "test": test}, settings, tuned, results, info, methods)
    out_path = results / ("tuning.json" if validate else "test.json")
    out = json.loads(out_path.read_text()) if out_path.is_file() else []
    for method in args.methods.split(","):
        if method not in GRIDS and not (method == RETRAIN and not validate):
            raise SystemExit(f"unknown method {method!r}; known: {', '.join(GRIDS)}")
        trainer = TRAINER.get(method, method)
        if validate:
            runs = []
            for i, config in enumerate(GRIDS[method]):
                bench.settings = settings.override(config)
                rows = bench.run_method(trainer, 0, name=f"{method}#{i}")
                runs.append((config, rows))
            pick = choose(runs, floor_of)
            tuned[method] = {"config": runs[pick][0], "index": pick, "validation": VALIDATION}
            out = [r for r in out if r.get("tuned_method") != method]
            for i, (config, rows) in enumerate(runs):
                out += [dict(r, tuned_method=method, config=config, chosen=i == pick, **info) for r in rows]
            write(out, out_path)
            write(tuned, tuned_path)
        else:
            if method != RETRAIN and method not in tuned:
                raise SystemExit(f"{method} has no tuned setting: run `python benchmarks/tune.py validate` first")
            config = {} if method == RETRAIN else tuned[method]["config"]
            for s in (int(x) for x in args.seeds.split(",")):
                if method == RETRAIN:  # its seed is the base recipe's
                    bench.settings = settings.override({"base.seed": s})
                    rows = bench.run_retrain(None)
                else:
                    bench.settings = settings.override(config)
                    rows = bench.run_method(trainer, s, name=method)
                out = [r for r in out if not (r["method"] == method and r["seed"] == s)]
                out += [dict(r, config=config, floors=floor_of, **info) for r in rows]
                write(out, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
