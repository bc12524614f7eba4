"""Long-sequence benchmark: as many requests in a row as the embedded world holds, at what cost.

    python benchmarks/long_sequence.py                                   # lethe (consolidating) and dfr-ft
    python benchmarks/long_sequence.py --methods lethe --every 0 --name lethe-plain   # no consolidation
    python benchmarks/long_sequence.py --floors --forget-samples 256     # each request's anchor confusion
    python benchmarks/long_sequence.py --methods lethe --out benchmarks/results/long-sequence-30.json  # then dfr-ft
    python benchmarks/long_sequence.py --anchors --sequence thirty-auto   # the automatic anchors, chosen on the base

Each step is one request, handled as `benchmarks/continual.py` handles it (the pipeline's replay and trainer; the
same judge and fixed-seed evaluation), plus, for Lethe, the pipeline's consolidation: whenever `--every`
requests sit unconsolidated, the stack is folded (`tasks.steps.consolidate`), the folded model is measured and
kept only if it passes the pipeline's gates against the unconsolidated one, as in `lethe run`: each forgotten
concept held to its anchor's confusion where that is above `gates.forget_acc_max` (measured on the parent's
samples when its request ran, as the pipeline records it), and after a rejected fold the next try waits
`consolidate.retry_after` requests.

Per step: forget accuracy of every concept forgotten so far, retained accuracy relative to the base, the step's
cost (replay + training + consolidation seconds; the evaluation is not part of it) and the sampling cost of the
model after the step against the base's: FLOPs of one denoising pass (deterministic) and wall time of
`sampling.batch_size` samples, timed alternately with the base (median ratio of `--timing-repeats` pairs).
Rows go to `results/long-sequence.json` after each step, and the model after each step to
`benchmarks/checkpoints/long-sequence-<name>/` (safetensors and their sha256; `--checkpoints` moves it), so an
interrupted run started again with the same command resumes after its last finished step (the parent
measurement the gates compare with is measured again).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.continual import RESULTS, Bench, machine, parse_overrides, write  # noqa: E402
from benchmarks.measures import peak_rss_mb, sequence_of, set_overrides, wilson  # noqa: E402
from benchmarks.tune import choose, final_ok, worst_forget  # noqa: E402
from lethe.models.adapter_stack import AdapterStack  # noqa: E402
from lethe.models.concepts import DOMAINS  # noqa: E402
from lethe.models.generator import Generator  # noqa: E402
from lethe.models.sampler import sample  # noqa: E402
from lethe.tasks.runtime import configure_torch  # noqa: E402
from lethe.tasks.settings import Settings, load_settings  # noqa: E402
from lethe.tasks.steps.anchor_choice import choose_anchor  # noqa: E402
from lethe.tasks.steps.consolidate import consolidate  # noqa: E402
from lethe.tasks.steps.gates import forget_limit  # noqa: E402
from lethe.tasks.stores.integrity import IntegrityError, manifest, manifest_digest, verify  # noqa: E402

# 19 requests in the 20-concept world: every concept but one (the last anchor). The first ten are continual.py's
# ten-request sequence; then the rest of each domain, the last digit anchored across domains on the one left.
NINETEEN = (
    "trouser:dress,digit_3:digit_8,bag:pullover,digit_7:digit_1,sandal:sneaker,shirt:tshirt,digit_5:digit_6,"
    "coat:pullover,digit_9:digit_4,ankle_boot:sneaker,dress:pullover,digit_1:digit_4,tshirt:pullover,"
    "digit_8:digit_0,pullover:sneaker,digit_6:digit_0,digit_2:digit_0,digit_4:digit_0,digit_0:sneaker"
)
# 30 requests across the three domains: the ten-request sequence, then clothing and digits as in NINETEEN,
# interleaved with 14 letters. The letters' anchors were left to the pipeline's automatic rule (`thirty-auto`)
# and fixed once on the base, before any run, with `--anchors` (results/long-sequence-anchors.json), so every
# method steers each letter to the same anchor.
ANCHORS_OF_THIRTY = {
    "letter_e": "letter_f",
    "letter_o": "letter_d",
    "letter_r": "letter_b",
    "letter_b": "letter_d",
    "letter_m": "letter_n",
    "letter_s": "letter_g",
    "letter_k": "letter_f",
    "letter_w": "letter_v",
    "letter_a": "letter_n",
    "letter_g": "letter_c",
    "letter_x": "letter_y",
    "letter_t": "letter_j",
    "letter_h": "letter_v",
}
THIRTY_AUTO = (
    NINETEEN.split(",dress:pullover")[0]
    + ",dress:pullover,letter_e:,digit_1:digit_4,letter_o:,tshirt:pullover,letter_r:,digit_8:digit_0,letter_b:,"
    "letter_m:,pullover:sneaker,letter_s:,digit_6:digit_0,letter_k:,letter_w:,letter_a:,digit_2:digit_0,letter_g:,"
    "letter_x:,letter_t:,letter_h:"
)
THIRTY = ",".join(  # the anchors --anchors chose (results/long-sequence-anchors.json), written out
    f"{c}:{a or ANCHORS_OF_THIRTY[c]}" for c, _, a in (p.partition(":") for p in THIRTY_AUTO.split(","))
)
# The validation sequence of the 46-concept world (DECISIONS.md, "Long sequences"): the 13 letters the thirty
# requests never forget, anchors by the automatic rule, fixed on the base with `--anchors --sequence
# validation-auto --out results/long-validation.json` (-> results/long-validation-anchors.json).
VALIDATION_AUTO = ",".join(f"letter_{c}:" for c in "cdfijlnpquvyz")
VALIDATION = ",".join(  # the anchors --anchors chose (results/long-validation-anchors.json), written out
    f"letter_{c}:letter_{a}" for c, a in zip("cdfijlnpquvyz", "spptszwbgwwte")
)
SEQUENCES = {
    "nineteen": NINETEEN,
    "thirty-auto": THIRTY_AUTO,
    "thirty": THIRTY,
    "validation-auto": VALIDATION_AUTO,
    "validation": VALIDATION,
}
METHODS = ("lethe", "dfr-ft")


def resolve_anchors(bench: Bench, settings, log=print) -> list[dict]:
    """The pipeline's automatic anchor for every request that names none, chosen on the base as the teacher,
    among the concepts not forgotten before it (`distill`'s rule, domain setting and replay samples: each
    concept's samples come from its own noise stream, so they are drawn once here and shared)."""
    d, s = settings.distill, settings.sampling
    names = bench.base.concepts
    images, labels = sample(bench.base, names, d.replay_per_concept, d.seed, s.steps, None, s.guidance, s.batch_size)
    label_names = [names[i] for i in labels.tolist()]
    domains = DOMAINS if d.anchor_domain == "same" else None
    rows, forgotten = [], []
    for concept, anchor in bench.sequence:
        if anchor is None:
            own = labels == names.index(concept)
            candidates = [c for c in names if c != concept and c not in forgotten]
            choice = choose_anchor(
                bench.judge,
                concept,
                images[own],
                images[~own],
                [n for n, o in zip(label_names, own.tolist()) if not o],
                candidates,
                d.anchor_rule,
                domains,
            )
            rows.append({"concept": concept, "anchor": choice.anchor, "rule": d.anchor_rule})
            log(f"automatic anchor of {concept}: {choice.anchor}")
        forgotten.append(concept)
    return rows


def denoising_flops(generator, adapters) -> int:
    """FLOPs of one denoising pass on a batch of 8 (the adapters' share is the same at any batch size)."""
    x = torch.randn(8, *generator.image_shape)
    t = torch.full((8,), 500)
    y = torch.zeros(8, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator.predict_noise(x, t, y, adapters)
    return counter.get_total_flops()


def sampling_ratio(base, generator, adapters, steps: int, n: int, repeats: int) -> tuple[float, float]:
    """(median of `repeats` wall-time ratios to the base, each pair timed back to back; the model's median
    seconds for n samples)."""
    ratios, seconds = [], []
    sample(generator, ["tshirt"], 8, 0, steps, adapters)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        sample(base, ["tshirt"], n, 0, steps, None, 1.0, n)
        mid = time.perf_counter()
        sample(generator, ["tshirt"], n, 0, steps, adapters, 1.0, n)
        end = time.perf_counter()
        ratios.append((end - mid) / (mid - start))
        seconds.append(end - mid)
    return round(statistics.median(ratios), 4), round(statistics.median(seconds), 3)


def fold_reasons(folded: dict, unfolded: dict, gates, confusions: dict, n: int) -> list[str]:
    """The pipeline's gates on a fold against the unfolded model, as the pipeline meets them. There production
    always passed its gates; here a request may have left a concept above its forget gate (`forget_limit`, with
    its anchor's confusion; the benchmark goes on where the pipeline would have rejected the request), and the
    fold cannot be held to a gate its parent fails: such a concept may not rise past the upper end of the
    unfolded model's 95% Wilson interval (`n` samples), the fold's own sampling noise."""
    reasons = [r for r in folded["gate_reasons"] if not r.startswith("forget accuracy of ")]
    for concept, acc in folded["forget_acc_each"].items():
        before, limit = unfolded["forget_acc_each"][concept], forget_limit(gates, confusions.get(concept))
        limit = limit if before <= limit else wilson(round(before * n), n)[1]
        if acc > limit:
            reasons.append(f"forget accuracy of {concept} is {acc:.3f} > {limit:.3f}")
    return reasons


def unconsolidated(stack: AdapterStack) -> int:
    return sum(not name.startswith("consolidated") for name in stack.names)


CHECKPOINTS = ROOT / "benchmarks" / "checkpoints"


def write_checkpoint(
    folder: Path,
    identity: dict,
    step: int,
    generator,
    stack,
    forgotten,
    anchors,
    base,
    base_sha256: str | None = None,
    progress: dict | None = None,
) -> None:
    """The model after `step` (generator and stack as safetensors, with their sha256) and where the sequence
    stands; whole or absent (written aside, then renamed over the previous one). A generator still equal to the
    base (Lethe's is frozen) is not written again: the checkpoint then holds only the stack, small enough to
    commit so that a run can go on from another machine (`--checkpoints`). `base_sha256`: the base's
    `weights_sha256`, when the caller has it already; `progress`: more of where the sequence stands (the anchors'
    confusions, the last rejected fold), as `resume` gives it back."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    parts = ("stack",)
    if not same_weights(generator, base):
        generator.save(partial / "generator")
        parts = ("generator", "stack")
    stack.save(partial / "stack")
    generator_is = "saved" if "generator" in parts else "base"
    state = {**identity, "step": step, "forgotten": forgotten, "anchors": anchors, "generator": generator_is}
    state["progress"] = progress or {}
    state["sha256"] = manifest(partial, parts)
    state["base_sha256"] = base_sha256 or weights_sha256(base)
    (partial / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def same_weights(generator, base) -> bool:
    ours, theirs = generator.state_dict(), base.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def weights_sha256(generator) -> str:
    """One sha256 over the generator's tensors (names, shapes, bytes): which base a checkpoint was taken on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(generator.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def resume(bench: Bench, folder: Path, identity: dict, kept: list[dict], name: str, base_sha256: str | None = None):
    """(rows, generator, stack, forgotten, anchors, parent measurement, next step, progress) from a checkpoint of
    the same run whose rows are all in `kept`; None to start from the first request. A checkpoint whose files differ
    from its recorded sha256 is refused (IntegrityError), never silently restarted over."""
    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text())
    rows = sorted((r for r in kept if r["method"] == name), key=lambda r: r["step"])
    if {k: state.get(k) for k in identity} != identity or [r["step"] for r in rows] != list(range(state["step"] + 1)):
        print(f"checkpoint {folder} is from another run or its rows are missing: starting from request 1")
        return None
    on_base = state.get("generator") == "base"
    if "sha256" in state:  # checkpoints written before the sha256 was recorded carry none
        parts = ("stack",) if on_base else ("generator", "stack")
        verify(folder, manifest_digest(state["sha256"]), state["sha256"], f"checkpoint {folder}", parts)
    if "base_sha256" in state and state["base_sha256"] != (base_sha256 or weights_sha256(bench.base)):
        raise IntegrityError(f"checkpoint {folder} was taken on another base generator than this run's")
    generator = copy.deepcopy(bench.base) if on_base else Generator.from_folder(folder / "generator")
    stack = AdapterStack.load(folder / "stack")
    forgotten, anchors = state["forgotten"], state["anchors"]
    parent = bench.eval.measure(generator, stack, forgotten, forgotten)
    print(f"{name}: resuming after request {state['step']} from {folder}", flush=True)
    return rows, generator, stack, forgotten, anchors, parent, state["step"] + 1, state.get("progress", {})


def checkpoint_identity(method: str, every: int, sequence, settings: Settings) -> dict:
    """What a checkpoint must match to be resumed: a setting changed mid-run would mix two runs in one curve
    (Lethe's fold, or a baseline's own section, e.g. dfr-ft's learning rate in a tuning round)."""
    identity = {"method": method, "every": every, "sequence": [list(pair) for pair in sequence]}
    if method == "lethe":
        identity["consolidate"] = settings.consolidate.model_dump(mode="json")
        identity["gates"] = settings.gates.model_dump(mode="json")  # they decide which folds are kept
    elif (section := method.replace("-", "_")) in type(settings.baselines).model_fields:
        identity["baseline"] = getattr(settings.baselines, section).model_dump(mode="json")
    return identity


def run(bench: Bench, method: str, every: int, name: str, args, save, kept: list[dict]) -> list[dict]:
    """Every request of the sequence for one method; Lethe consolidates every `every` requests (0: never)."""
    settings = bench.settings
    base_flops = denoising_flops(bench.base, None)
    rows = [dict(bench.base_row(name, settings.train.seed), flops_ratio=1.0, sampling_ratio=1.0)]
    generator, stack, forgotten, anchors, parent = copy.deepcopy(bench.base), AdapterStack(), [], {}, bench.eval.base
    first, progress = 1, {"confusions": {}, "rejected_at": None}
    checkpoint = Path(args.checkpoints) / f"long-sequence-{name}"
    identity = checkpoint_identity(method, every, bench.sequence, settings)
    base_sha256 = weights_sha256(bench.base)
    resumed = resume(bench, checkpoint, identity, kept, name, base_sha256)
    if resumed:
        rows, generator, stack, forgotten, anchors, parent, first, saved = resumed
        progress.update(saved)
    for step, (concept, anchor) in enumerate(bench.sequence, start=1):
        if step < first:
            continue
        started = time.time()
        generator, stack, trainable, train_seconds, anchor, extra = bench.train_step(
            method, generator, stack, concept, anchor, forgotten, settings, name=f"request-{step}"
        )
        step_seconds = time.time() - started
        forgotten, anchors = forgotten + [concept], {**anchors, concept: anchor}
        if confusion := bench.eval.anchor_confusion(parent, bench.base.concepts, concept, anchor):
            progress["confusions"][concept] = list(confusion)  # measured on the parent, as the pipeline does
        confusions = {c: tuple(kn) for c, kn in progress["confusions"].items()}
        columns, measured = bench.eval.measured_row(generator, stack, forgotten, concept, anchors, parent, confusions)
        folded = {}
        rejected_at, retry_after = progress["rejected_at"], settings.consolidate.retry_after
        if (
            method == "lethe"
            and every
            and unconsolidated(stack) >= every
            and (rejected_at is None or step - rejected_at >= retry_after)
        ):
            start = time.time()
            result = consolidate(
                generator,
                stack,
                f"consolidated-{step}",
                settings.adapter,
                settings.consolidate,
                settings.sampling,
                forgotten=tuple(forgotten),
                recovery=settings.recovery,
            )
            seconds = time.time() - start
            step_seconds += seconds
            candidate = result.consolidated.stack
            c_columns, c_measured = bench.eval.measured_row(
                generator, candidate, forgotten, concept, anchors, measured, confusions
            )
            reasons = fold_reasons(c_columns, columns, settings.gates, confusions, bench.eval.forget_n)
            progress["rejected_at"] = step if reasons else None
            folded = {
                "consolidated": not reasons,
                "consolidate_seconds": round(seconds, 1),
                "consolidate_reasons": reasons,
                "folded": result.folded,
                "unexplained": result.consolidated.unexplained,
                "before_consolidation": {k: columns[k] for k in ("forget_acc", "retain_acc", "kid_ratio")},
            }
            if not reasons:  # as the pipeline: a consolidation that fails its gates is not kept
                gate = {"rejected": columns["rejected"], "gate_reasons": columns["gate_reasons"]}  # the request's own
                stack, columns, measured = candidate, {**c_columns, **gate}, c_measured
        parent = measured
        ratio, seconds = sampling_ratio(
            bench.base, generator, stack, settings.sampling.steps, settings.sampling.batch_size, args.timing_repeats
        )
        row = {"method": name, "seed": settings.train.seed, "step": step, "concept": concept, "anchor": anchor}
        row.update(columns, anchor_confusion=list(confusion) if confusion else None)
        row.update(
            trainable_params=trainable,
            base_params=bench.base_params,
            adapters=len(stack),
            step_seconds=round(step_seconds, 1),
            train_seconds=train_seconds,
            sample_seconds=seconds,
            sampling_ratio=ratio,
            flops_ratio=round(denoising_flops(generator, stack) / base_flops, 4),
            peak_rss_mb=round(peak_rss_mb(), 1),
            **folded,
            **{k: v for k, v in extra.items() if k != "history"},
        )
        rows.append(row)
        print(
            f"{name} step {step} {concept}->{anchor}: forget {row['forget_acc']:.3f} retain {row['retain_acc']} "
            f"adapters {row['adapters']} sampling x{ratio:.3f} (flops x{row['flops_ratio']:.3f}) "
            f"step {row['step_seconds']:.0f}s" + (f" consolidated={folded['consolidated']}" if folded else ""),
            flush=True,
        )
        save(rows)
        write_checkpoint(
            checkpoint, identity, step, generator, stack, forgotten, anchors, bench.base, base_sha256, progress
        )
    return rows


def floors_path(out: Path) -> Path:
    """Where the anchor confusions of the sequence whose rows go to `out` are kept (render_tables reads it)."""
    return out.with_name(f"{out.stem}-floors.json")


def anchors_path(out: Path) -> Path:
    """Where the automatic anchors of the sequence whose rows go to `out` are kept (results/long-sequence-anchors.json
    for the default `--out`)."""
    return out.with_name(f"{out.stem}-anchors.json")


def chosen_path(out: Path) -> Path:
    """Where a tuning round's choice over the runs in `out` is kept (render_tables reads it)."""
    return out.with_name(f"{out.stem}-chosen.json")


def choose_candidate(rows: list[dict], floor_of: dict[str, float], method: str, requests: int) -> dict:
    """The protocol's rule (`benchmarks/tune.choose`) over a tuning round's runs of `method`, named
    `<method>-1`, `<method>-2`, ... in the order they were declared; every run must have reached `requests`."""
    runs: dict[int, list[dict]] = {}
    for r in rows:
        head, _, index = r["method"].rpartition("-")
        if head == method and index.isdigit():
            runs.setdefault(int(index), []).append(r)
    if not runs:
        raise ValueError(f"no run of {method} to choose from (rows named {method}-1, {method}-2, ...)")
    names = [f"{method}-{i}" for i in sorted(runs)]
    ordered = [sorted(runs[i], key=lambda r: r["step"]) for i in sorted(runs)]
    unfinished = [n for n, steps in zip(names, ordered) if steps[-1]["step"] != requests]
    if unfinished:
        raise ValueError(f"{', '.join(unfinished)} did not reach request {requests}: the rule compares whole runs")
    configs = [set_overrides(steps[-1]["command"]) for steps in ordered]
    index = choose(list(zip(configs, ordered)), floor_of)
    candidates = [
        {
            "name": name,
            "config": config,
            "retain_acc": steps[-1]["retain_acc"],
            "worst_forget": worst_forget(steps),
            "within_floors": final_ok(steps, floor_of),
            "chosen": i == index,
        }
        for i, (name, config, steps) in enumerate(zip(names, configs, ordered))
    ]
    return {"method": method, "chosen": names[index], "config": configs[index], "candidates": candidates}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--sequence", default="thirty", help=f"concept:anchor,... or a name: thirty, {', '.join(SEQUENCES)}"
    )
    parser.add_argument("--every", type=int, help="Lethe's consolidation period (default: consolidate.every)")
    parser.add_argument("--name", help="label of a single method's rows (a variant)")
    parser.add_argument("--forget-samples", type=int, default=64)
    parser.add_argument("--retain-samples", type=int, default=32)
    parser.add_argument("--eval-seed", type=int, default=777)
    parser.add_argument("--timing-repeats", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", default=str(RESULTS / "long-sequence.json"))
    parser.add_argument(
        "--checkpoints",
        default=str(CHECKPOINTS),
        help="where the model after each request is kept for resuming (one folder per method)",
    )
    parser.add_argument(
        "--floors",
        action="store_true",
        help="instead: each request's anchor confusion (the judge calling the anchor's base samples the concept) "
        "-> <out>-floors.json (results/long-sequence-floors.json by default)",
    )
    parser.add_argument(
        "--anchors",
        action="store_true",
        help="instead: the automatic anchor of every request that names none, on the base "
        "-> <out>-anchors.json (results/long-sequence-anchors.json by default)",
    )
    parser.add_argument(
        "--choose",
        metavar="METHOD",
        help="instead: the protocol's rule (benchmarks/tune.py) over the runs METHOD-1, METHOD-2, ... in <out>, "
        "held to <out>-floors.json -> <out>-chosen.json",
    )
    args = parser.parse_args(argv)
    settings = load_settings(args.params).override(parse_overrides(args.set))
    configure_torch(settings.runtime)
    every = settings.consolidate.every if args.every is None else args.every
    methods = args.methods.split(",")
    if args.name and len(methods) > 1:
        parser.error("--name labels one method's rows")
    info = {
        "machine": machine(),
        "command": "python benchmarks/long_sequence.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "every": every,
    }
    sequence = sequence_of(SEQUENCES.get(args.sequence, args.sequence))
    if args.anchors:
        bench = Bench(settings, sequence, args.forget_samples, args.retain_samples, args.eval_seed, measure_base=False)
        write([dict(r, **info) for r in resolve_anchors(bench, settings)], anchors_path(Path(args.out)))
        return 0
    if args.choose:
        out = Path(args.out)
        for path, how in ((out, "the candidates"), (floors_path(out), "--floors with the same --out")):
            if not path.is_file():
                parser.error(f"--choose reads {path}: run {how} first")
        floors = json.loads(floors_path(out).read_text())  # one per request of the sequence the runs forgot
        floor_of = {r["concept"]: r["floor"] for r in floors}
        try:
            chosen = choose_candidate(json.loads(out.read_text()), floor_of, args.choose, len(floors))
        except ValueError as error:
            parser.error(str(error))
        write([dict(chosen, **info)], chosen_path(out))
        print(f"{args.choose}: the rule chooses {chosen['chosen']} {chosen['config']}")
        return 0
    if args.floors:
        bench = Bench(settings, sequence, args.forget_samples, args.retain_samples, args.eval_seed, measure_base=False)
        write([dict(r, **info) for r in bench.run_floors()], floors_path(Path(args.out)))
        return 0
    bench = Bench(settings, sequence, args.forget_samples, args.retain_samples, args.eval_seed)
    out = Path(args.out)
    kept = json.loads(out.read_text()) if out.is_file() else []
    for method in methods:
        name = args.name or method
        others = [r for r in kept if r["method"] != name]
        run(bench, method, every, name, args, lambda rows: write(others + [dict(r, **info) for r in rows], out), kept)
        kept = json.loads(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
