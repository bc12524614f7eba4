"""Choosing the consolidation setting on a validation stack (never the test sequence's).

    python benchmarks/consolidation_validation.py h16-1500 h64-3000 h64-g2-3000 persite-h16-1500
    python benchmarks/consolidation_validation.py --out benchmarks/results/consolidation-validation-46.json \
        h64-3000 h64-3000-f50 h64-3000-r8192      # the fold's rows, in the 46-concept world (issue 14)
    python benchmarks/consolidation_validation.py --workspace W --recovery \
        --out benchmarks/results/consolidation-validation-adversarial.json h64-3000-f50 h64-3000-f50-a2

Builds an 8-request validation stack (the test sequence's first eight pairs reversed: concept and anchor swap),
folds it under each named setting and judges the fold against the unfolded stack: forget accuracy of each of the
8 forgotten concepts (128 samples each), mean retained accuracy (64 each) and the sampling wall-time ratio to the
base (256 samples, median of 5 back-to-back pairs). Rule, fixed before the run: the cheapest setting (sampling
ratio) whose fold passes the pipeline's gates against the unfolded stack (every forgotten concept at most
`gates.forget_acc_max`, retained at least `gates.retain_ratio_min` of the stack's). Writes
results/consolidation-validation.json or --out (settings already measured are kept; the stack is cached in
/tmp, one per output file). The first file was measured in the 20-concept world.

With `--adversarial-rounds N` the stack's requests are trained against the recovery attack (`train.adversarial`,
as the escalation ladder's recovery rung trains them), and with `--recovery` the stack and every fold also face
the recovery audit on every forgotten concept (the pipeline's, attacker holding real train-split images); the
rule then adds the recovery gate and picks, among the folds that pass every gate, the lowest worst recovery.
`--workspace W` folds the production stack that a batch left in W instead of building one.
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
from lethe.tasks.steps.recovery_audit import audit_recovery  # noqa: E402
from lethe.tasks.steps.train_adapter import train_adapter  # noqa: E402
from lethe.tasks.stores.prepared_splits import load_split  # noqa: E402
from lethe.tasks.stores.registry import Registry  # noqa: E402
from lethe.tasks.workspace import Workspace  # noqa: E402

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
    "h64-3000-f50-a2": {"hidden": 64, "steps": 3000, "forgotten_share": 0.5, "attack_rounds": 2, "attack_share": 0.5},
}
OUT = ROOT / "benchmarks" / "results" / "consolidation-validation.json"


def validation_stack(s, g, judge, cached: Path) -> AdapterStack:
    """The VALIDATION requests' stack, trained once and cached."""
    if cached.exists():
        return AdapterStack.load(cached)
    stack, forgotten = AdapterStack(), []
    for i, (c, a) in enumerate(VALIDATION, 1):
        r = distill(g, stack, judge, c, a, forgotten, s.distill, s.sampling)
        stack = train_adapter(
            g, stack, r.forget_images, r.retain_images, r.retain_labels, c, a, s.adapter, s.train, f"request-{i}"
        ).stack
        forgotten.append(c)
        print(f"validation stack: request {i} of {len(VALIDATION)} ({c} -> {a})", flush=True)
    stack.save(cached)
    return stack


def production_stack(s, workspace: Path):
    """The production version of a workspace a batch left (its generator, stack and forgotten concepts)."""
    settings = s.override({"paths.workspace": str(workspace)})
    registry = Registry(Workspace.open(settings), settings.registry)
    production = registry.production()
    if production is None:
        raise SystemExit(f"{workspace} has no production version")
    g, stack = registry.load(production.version)
    forgotten = [c for c in production.tags.get("forgotten", "").split(",") if c]
    return g, stack, forgotten, f"{workspace}: production version {production.version}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(CONFIGS), help="the fold settings to measure")
    parser.add_argument("--out", default=str(OUT), help="results file (settings already in it are kept)")
    parser.add_argument("--adversarial-rounds", type=int, default=0, help="train.adversarial.rounds of the stack")
    parser.add_argument("--recovery", action="store_true", help="audit the stack and every fold for recovery")
    parser.add_argument("--workspace", help="fold the production stack of this workspace instead")
    args = parser.parse_args(argv)
    names, out = args.names, Path(args.out)
    cached = Path(f"/tmp/lethe-{out.stem}-adversarial{args.adversarial_rounds}-stack")
    s = load_settings(ROOT / "params.yaml")
    adversarial = s.train.adversarial.model_copy(update={"rounds": args.adversarial_rounds})
    s = s.model_copy(update={"train": s.train.model_copy(update={"adversarial": adversarial})})
    judge = Judge.load(s.paths.judge)
    if args.workspace:
        g, stack, forgotten, where = production_stack(s, Path(args.workspace))
    else:
        g = Generator.from_folder(s.paths.base)
        stack, forgotten, where = validation_stack(s, g, judge, cached), [c for c, _ in VALIDATION], "validation"
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

    attacker = load_split("train", s.paths.prepared) if args.recovery else None

    def recovery(adapters) -> dict:
        return {"recovery": audit_recovery(g, adapters, judge, forgotten, attacker, s.recovery, s.sampling)}

    results = json.loads(out.read_text()) if out.is_file() else {}
    if "stack" not in results:
        results["stack"] = {"acc": accuracy(stack), "ratio": ratio(stack), **(recovery(stack) if attacker else {})}
        rounds = None if args.workspace else args.adversarial_rounds  # a workspace's: whatever its batch ran
        results["stack"] |= {"source": where, "forgotten": forgotten, "adversarial_rounds": rounds}
    for name in names:
        config = s.consolidate.model_copy(update=CONFIGS[name])
        r = consolidate(g, stack, "c", s.adapter, config, s.sampling, forgotten=tuple(forgotten), recovery=s.recovery)
        fold = r.consolidated
        results[name] = {
            "acc": accuracy(fold.stack),
            "ratio": ratio(fold.stack),
            "unexplained": fold.unexplained,
            "seconds": r.seconds,
            **(recovery(fold.stack) if attacker else {}),
        }
        print(name, results[name], flush=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
