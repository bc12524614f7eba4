"""Continual-unlearning benchmark: every method on the same request sequence, replay sets and evaluation.

    python benchmarks/continual.py                      # everything below, in order, then the report
    python benchmarks/continual.py methods --methods lethe,dfr-ft,fade-lora,esd
    python benchmarks/continual.py retrain              # the gold standard, once, at the end of the sequence
    python benchmarks/continual.py sweep                # intensity (ODE horizon) sweep on the first request
    python benchmarks/continual.py ablation             # trajectory terms and adapter placement, first request
    python benchmarks/continual.py floors               # per request: the judge's confusion of anchor with concept
    python benchmarks/continual.py merge                # parts -> continual.json
    python benchmarks/continual.py --params params.text-to-image.yaml methods   # text-to-image: continual_text.py

Per step and method: forget accuracy over every concept forgotten so far (judged on `--forget-samples` samples
each, with a Wilson interval), retained accuracy in- and cross-domain relative to the base on the same sampling
seeds (`--retain-samples` each), the share of retained samples judged as the base judged them, KID on retained
concepts, trainable parameters, step wall time, sampling time with the current model and peak RSS. Rows with
step 0 hold the base. Training and sampling are the pipeline's own code (tasks.distill, tasks.train_adapter,
models.sampler); only the baselines' trainers live in benchmarks/baselines.py. Each part writes its own file
under `results/parts/`, so parts can run in separate processes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.baselines import retrain_without, train_esd, train_full_finetune, train_lora  # noqa: E402
from benchmarks.measures import anchor_confusion, peak_rss_mb, sequence_of, wilson  # noqa: E402
from lethe.models.adapter_stack import AdapterStack  # noqa: E402
from lethe.models.concepts import DOMAINS  # noqa: E402
from lethe.models.generator import Generator  # noqa: E402
from lethe.models.judge import Judge  # noqa: E402
from lethe.models.sampler import sample  # noqa: E402
from lethe.models.text_generator import is_text_to_image_folder  # noqa: E402
from lethe.tasks.runtime import configure_torch  # noqa: E402
from lethe.tasks.settings import Settings, SettingsError, load_settings  # noqa: E402
from lethe.tasks.steps.distill import distill  # noqa: E402
from lethe.tasks.steps.evaluate import kid_score  # noqa: E402
from lethe.tasks.steps.gates import check_gates  # noqa: E402
from lethe.tasks.steps.train_adapter import build_targets, train_adapter  # noqa: E402
from lethe.tasks.stores.prepared_splits import load_split  # noqa: E402

DEFAULT_SEQUENCE = "trouser:dress,digit_3:digit_8,bag:pullover,digit_7:digit_1,sandal:sneaker"
# the 10-request run: the default sequence, then five more requests in the same two domains
TEN_SEQUENCE = DEFAULT_SEQUENCE + ",shirt:tshirt,digit_5:digit_6,coat:pullover,digit_9:digit_4,ankle_boot:sneaker"
SEQUENCES = {"five": DEFAULT_SEQUENCE, "ten": TEN_SEQUENCE}
METHODS = ("lethe", "dfr-ft", "fade-lora", "esd")
SWEEP = (0.5, 0.75, 1.0, 1.5, 2.0)
RESULTS = ROOT / "benchmarks" / "results"


class Evaluation:
    """Samples every concept on fixed seeds: forgotten concepts `forget_n` times, the others `retain_n` times
    (the first `retain_n` of a concept's noise stream are the same whatever n), and compares with the base."""

    def __init__(
        self, judge: Judge, real, settings: Settings, forget_n: int, retain_n: int, seed: int, collapse_min=0.5
    ):
        self.judge, self.real, self.settings = judge, real, settings
        self.forget_n, self.retain_n, self.seed = forget_n, retain_n, seed
        self.collapse_min = collapse_min
        self.base: dict | None = None

    def predictions(self, generator: Generator, adapters, concepts: list[str], n: int):
        sampling = self.settings.sampling
        images, labels = sample(
            generator, concepts, n, self.seed, sampling.steps, adapters, sampling.guidance, sampling.batch_size
        )
        return images, labels, self.judge.classify(images)

    @torch.no_grad()
    def own_probability(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The judge's probability of each sample's own concept: a graded forget score that still moves
        when accuracy sits at 0 (used to read the intensity sweep at its floor)."""
        probs = torch.cat([self.judge(images[i : i + 1024]).softmax(1) for i in range(0, len(images), 1024)])
        return probs[torch.arange(len(labels)), labels]

    def measure(self, generator: Generator, adapters, forgotten: list[str], watch: list[str]) -> dict:
        """Accuracy per concept (`watch` at forget_n, the rest at retain_n), KID and agreement with the base."""
        concepts = generator.concepts
        many = [c for c in concepts if c in forgotten or c in watch]
        few = [c for c in concepts if c not in many]
        images, labels, predicted = self.predictions(generator, adapters, many, self.forget_n)
        if few:
            i2, l2, p2 = self.predictions(generator, adapters, few, self.retain_n)
            images, labels, predicted = torch.cat([images, i2]), torch.cat([labels, l2]), torch.cat([predicted, p2])
        out = {"acc": {}, "hits": {}, "n": {}, "first": {}, "prob": {}, "pred": {}, "diversity": {}}
        own = self.own_probability(images, labels)
        for c in concepts:
            i = concepts.index(c)
            mine = predicted[labels == i]
            out["acc"][c] = float((mine == i).float().mean())
            out["prob"][c] = float(own[labels == i].mean())
            out["hits"][c], out["n"][c] = int((mine == i).sum()), len(mine)
            out["first"][c] = mine[: self.retain_n]  # the base comparison uses the common prefix
            out["pred"][c] = mine
            out["diversity"][c] = diversity(self.judge, images[labels == i][: self.retain_n])
        out["images"], out["labels"] = images, labels
        out["kid"] = self.kid(out, [c for c in concepts if c not in forgotten], concepts)
        return out

    def kid(self, result: dict, retained: list[str], concepts: list[str]) -> float:
        """KID of the first `retain_n` samples of every retained concept (a balanced set, like the real one)."""
        keep = torch.cat(
            [torch.nonzero(result["labels"] == concepts.index(c)).flatten()[: self.retain_n] for c in retained]
        )
        real_keep = torch.isin(self.real[1], torch.tensor([concepts.index(c) for c in retained]))
        return kid_score(
            self.judge,
            self.real[0][real_keep],
            result["images"][keep],
            self.settings.eval.kid_subset,
            self.settings.eval.kid_subsets,
            "cpu",
        )

    def row(
        self,
        generator: Generator,
        adapters,
        forgotten: list[str],
        domain_of: str | None,
        anchors: dict[str, str] | None = None,
        parent: dict | None = None,
    ) -> dict:
        """The metric columns of one benchmark row (the base must have been measured first)."""
        return self.measured_row(generator, adapters, forgotten, domain_of, anchors, parent)[0]

    def measured_row(self, generator, adapters, forgotten, domain_of, anchors=None, parent=None, confusion=None):
        """(the row's columns, the measurement behind them: the next step's `parent`)."""
        m = self.measure(generator, adapters, forgotten, forgotten)
        return self.row_of(m, generator.concepts, forgotten, domain_of, anchors, parent, confusion), m

    @staticmethod
    def anchor_confusion(parent: dict, concepts: list[str], concept: str, anchor: str | None):
        """(k, n): k of the anchor's n samples in the `parent` measurement judged as `concept`, as the pipeline
        records it when a request runs (`tasks.operations.anchor_confusions`); None without an anchor."""
        if anchor not in concepts:
            return None
        predicted = parent["pred"][anchor]
        return int((predicted == concepts.index(concept)).sum()), len(predicted)

    def row_of(
        self,
        m: dict,
        concepts: list[str],
        forgotten: list[str],
        domain_of: str | None,
        anchors: dict[str, str] | None = None,
        parent: dict | None = None,
        confusion: dict[str, tuple[int, int]] | None = None,
    ) -> dict:
        """The columns of a measurement `m` against the base. With `anchors` (concept -> anchor): the share of
        each forgotten concept's samples judged as its anchor. Collapse: a concept's sample diversity below
        `collapse_min` of the base's (for a forgotten concept, of its anchor's base samples). With `parent`
        (the previous model's measurement): the pipeline's gates, as if the step were to be promoted, with each
        forgotten concept's anchor `confusion` where given."""
        retained = [c for c in concepts if c not in forgotten]

        def prefix_acc(result, c):
            return float((result["first"][c] == concepts.index(c)).float().mean())

        def relative(cs):
            if not cs:
                return None
            base = sum(prefix_acc(self.base, c) for c in cs)
            return round(sum(prefix_acc(m, c) for c in cs) / max(base, 1e-9), 4)

        same = sum(int((m["first"][c] == self.base["first"][c]).sum()) for c in retained)
        total = sum(len(m["first"][c]) for c in retained)
        worst = max(forgotten, key=lambda c: m["acc"][c]) if forgotten else None
        return {
            "forget_acc": round(m["acc"][worst], 4) if worst else None,
            "forget_ci": wilson(m["hits"][worst], m["n"][worst]) if worst else None,
            "forget_n": m["n"][worst] if worst else None,
            "forget_acc_each": {c: round(m["acc"][c], 4) for c in forgotten},
            "forget_prob": round(m["prob"][worst], 5) if worst else None,  # judge's mean probability of it
            "retain_acc_in": relative([c for c in retained if domain_of and DOMAINS[c] == DOMAINS[domain_of]]),
            "retain_acc_cross": relative([c for c in retained if domain_of and DOMAINS[c] != DOMAINS[domain_of]]),
            "retain_acc": relative(retained),
            "unchanged": round(same / max(total, 1), 4),
            "kid": round(m["kid"], 3),
            "kid_ratio": round(m["kid"] / self.kid(self.base, retained, concepts), 4),  # base on the same concepts
            "accuracy": {c: round(m["acc"][c], 4) for c in concepts},
            **self.anchor_columns(m, concepts, forgotten, anchors or {}),
            **self.collapse_columns(m, retained, forgotten, anchors or {}),
            **self.gate_columns(m, concepts, forgotten, parent, confusion),
        }

    def anchor_columns(self, m: dict, concepts: list[str], forgotten: list[str], anchors: dict) -> dict:
        each = {
            c: round(float((m["pred"][c] == concepts.index(anchors[c])).float().mean()), 4)
            for c in forgotten
            if anchors.get(c)
        }
        return {"drawn_as_anchor": min(each.values()) if each else None, "drawn_as_anchor_each": each}

    def collapse_columns(self, m: dict, retained: list[str], forgotten: list[str], anchors: dict) -> dict:
        """Diversity (mean pairwise judge-feature distance) against the base's: featureless or repeated
        images score near 0 whatever the judge calls them, so a collapsed step cannot pass on accuracy."""
        base = self.base["diversity"]
        ratios = {c: m["diversity"][c] / max(base[c], 1e-9) for c in retained}
        ratios.update({c: m["diversity"][c] / max(base[anchors.get(c) or c], 1e-9) for c in forgotten})
        worst = min(ratios, key=ratios.get) if ratios else None
        return {
            "diversity_ratio_min": round(ratios[worst], 4) if worst else None,
            "diversity_worst": worst,
            "collapsed": bool(worst and ratios[worst] < self.collapse_min),
        }

    def gate_columns(
        self, m: dict, concepts: list[str], forgotten: list[str], parent: dict | None, confusion=None
    ) -> dict:
        """The pipeline's own gates (tasks/steps/gates.py) on this measurement against the parent's."""
        if parent is None:
            return {}
        retained = [c for c in concepts if c not in forgotten]

        def scored(result: dict) -> dict:
            return {
                "forgotten": list(forgotten),
                "accuracy": result["acc"],
                "retain_acc_mean": sum(result["acc"][c] for c in retained) / max(len(retained), 1),
                "kid": self.kid(result, retained, concepts),
            }

        reasons = check_gates(scored(m), scored(parent), self.settings.gates, confusion)
        return {"rejected": bool(reasons), "gate_reasons": reasons}


def diversity(judge: Judge, images: torch.Tensor) -> float:
    """Mean pairwise L2 distance of the judge's features of `images` (0 for fewer than two)."""
    if len(images) < 2:
        return 0.0
    with torch.no_grad():
        features = torch.cat([judge.features(images[i : i + 512]) for i in range(0, len(images), 512)])
    distances = torch.cdist(features, features)
    return float(distances.sum() / (len(images) * (len(images) - 1)))


def sampling_seconds(generator: Generator, adapters, steps: int, n: int = 64, repeats: int = 2) -> float:
    """Best of `repeats` timings of n samples (the first call also warms up)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.time()
        sample(generator, ["tshirt"], n, seed=0, steps=steps, adapters=adapters)
        best = min(best, time.time() - start)
    return round(best, 3)


class Bench:
    """What every part shares: the base, the judge, the real test split and the base's evaluation."""

    def __init__(
        self,
        settings: Settings,
        sequence: list[tuple[str, str | None]],
        forget_n: int,
        retain_n: int,
        eval_seed: int,
        parts: Path = RESULTS / "parts",
        measure_base: bool = True,
    ):
        self.settings, self.sequence, self.parts = settings, sequence, parts
        self.base = Generator.from_folder(settings.paths.base)
        self.judge = Judge.load(settings.paths.judge)
        self.real = load_split("test", settings.paths.prepared)
        self.base_params = sum(p.numel() for p in self.base.unet.parameters())
        self.eval = Evaluation(self.judge, self.real, settings, forget_n, retain_n, eval_seed)
        if measure_base:  # every part but `floors` compares with the base
            self.eval.base = self.eval.measure(self.base, None, [], [c for c, _ in sequence])
            self.base_sample_seconds = sampling_seconds(self.base, None, settings.sampling.steps)

    def base_row(self, method: str, seed: int) -> dict:
        acc = self.eval.base["acc"]
        return {
            "method": method,
            "seed": seed,
            "step": 0,
            "concept": None,
            "anchor": None,
            "forget_acc": None,
            "forget_acc_each": {c: round(acc[c], 4) for c, _ in self.sequence},
            "retain_acc_in": 1.0,
            "retain_acc_cross": 1.0,
            "retain_acc": 1.0,
            "unchanged": 1.0,
            "kid": round(self.eval.base["kid"], 3),
            "kid_ratio": 1.0,
            "trainable_params": 0,
            "base_params": self.base_params,
            "step_seconds": 0.0,
            "train_seconds": 0.0,
            "sample_seconds": self.base_sample_seconds,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "accuracy": {c: round(a, 4) for c, a in acc.items()},
        }

    def train_step(
        self,
        method: str,
        generator: Generator,
        stack: AdapterStack,
        concept: str,
        anchor: str | None,
        forgotten: list[str],
        settings: Settings,
        name: str,
    ):
        """One request for one method: replay from the current model, then train. Returns the new
        (generator, stack), trainable parameters, training seconds, the anchor and extra row fields."""
        replay = distill(generator, stack, self.judge, concept, anchor, forgotten, settings.distill, settings.sampling)
        anchor = replay.anchor
        if method == "lethe":
            result = train_adapter(
                generator,
                stack,
                replay.forget_images,
                replay.retain_images,
                replay.retain_labels,
                concept,
                anchor,
                settings.adapter,
                settings.train,
                name,
            )
            return (
                generator,
                result.stack,
                result.trainable_params,
                result.seconds,
                anchor,
                {"targets": result.targets, "saliency": result.saliency, "history": result.history[-1:]},
            )
        start = time.time()
        pool = build_targets(
            generator,
            stack,
            replay.forget_images,
            replay.retain_images,
            replay.retain_labels,
            concept,
            anchor,
            settings.train,
        )
        extra = {}
        if method == "dfr-ft":
            generator, trainable, _ = train_full_finetune(generator, pool, settings)
        elif method == "esd":
            generator, trainable, _ = train_esd(generator, pool, settings)
        elif method == "fade-lora":
            generator, trainable, _, modules = train_lora(generator, pool, settings)
            extra["targets"] = modules
        else:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        return generator, stack, trainable, round(time.time() - start, 1), anchor, extra

    def run_method(self, method: str, seed: int, log=print, save=None, name: str | None = None) -> list[dict]:
        """Every step of the sequence for one method and training seed; `save(rows)` after each step, so an
        interrupted run keeps the steps it finished. `name` labels the rows (a variant of a method)."""
        settings = self.settings.override({"train.seed": seed})
        name = name or method
        rows = [dict(self.base_row(name, seed))]
        generator, stack, forgotten = copy.deepcopy(self.base), AdapterStack(), []
        anchors, parent, confusions = {}, self.eval.base, {}
        for step, (concept, anchor) in enumerate(self.sequence, start=1):
            started = time.time()
            generator, stack, trainable, train_seconds, anchor, extra = self.train_step(
                method, generator, stack, concept, anchor, forgotten, settings, name=f"step-{step}"
            )
            forgotten, anchors = forgotten + [concept], {**anchors, concept: anchor}
            if confusion := self.eval.anchor_confusion(parent, generator.concepts, concept, anchor):
                confusions[concept] = confusion
            columns, parent = self.eval.measured_row(generator, stack, forgotten, concept, anchors, parent, confusions)
            row = {"method": name, "seed": seed, "step": step, "concept": concept, "anchor": anchor, **columns}
            row.update(
                trainable_params=trainable,
                base_params=self.base_params,
                step_seconds=round(time.time() - started, 1),
                train_seconds=train_seconds,
                sample_seconds=sampling_seconds(generator, stack, settings.sampling.steps),
                peak_rss_mb=round(peak_rss_mb(), 1),
                **extra,
            )
            rows.append(row)
            log(
                f"{name} seed {seed} step {step} {concept}->{anchor}: forget {row['forget_acc']:.3f} "
                f"retain in {row['retain_acc_in']} cross {row['retain_acc_cross']} unchanged {row['unchanged']:.3f} "
                f"kid x{row['kid_ratio']:.2f} train {train_seconds:.0f}s step {row['step_seconds']:.0f}s"
            )
            if save:
                save(rows)
        return rows

    def run_retrain(self, steps: int | None, log=print) -> list[dict]:
        s = self.settings
        images, labels = load_split("train", s.paths.prepared)
        steps = steps or s.baselines.retrain.steps
        forgotten = [c for c, _ in self.sequence]
        started = time.time()
        generator, metrics = retrain_without(
            images, labels, self.base.labels(forgotten), s.base, s.data.image_size, steps
        )
        row = {
            "method": "retrain",
            "seed": s.base.seed,
            "step": len(self.sequence),
            "concept": forgotten[-1],
            "anchor": None,
            "retrain_steps": steps or s.base.steps,
            **self.eval.row(generator, None, forgotten, forgotten[-1]),
        }
        row.update(
            trainable_params=self.base_params,
            base_params=self.base_params,
            step_seconds=round(time.time() - started, 1),
            train_seconds=metrics["train_seconds"],
            sample_seconds=sampling_seconds(generator, None, s.sampling.steps),
            peak_rss_mb=round(peak_rss_mb(), 1),
        )
        log(f"retrain ({row['retrain_steps']} steps): forget {row['forget_acc']:.3f} retain {row['retain_acc']}")
        return [self.base_row("retrain", row["seed"]), row]

    def run_floors(self, log=print) -> list[dict]:
        """Per request, the anchor's confusion: how often the judge calls the *anchor's* base samples the
        forgotten concept, the forget accuracy of a model that renders the concept exactly as the anchor (a
        reference, not a lower bound: a method may draw something the judge confuses less)."""
        rows = []
        for concept, anchor in self.sequence:
            if anchor is None:
                continue
            images, labels, predicted = self.eval.predictions(self.base, None, [anchor], self.eval.forget_n)
            confusion = anchor_confusion(predicted, self.base.concepts.index(concept))
            rows.append(
                {
                    "concept": concept,
                    "anchor": anchor,
                    **confusion,
                    "anchor_acc": round(float((predicted == labels).float().mean()), 4),
                }
            )
            log(f"anchor confusion {concept} -> {anchor}: {confusion['floor']:.3f} of {confusion['n']}")
        return rows

    def first_request(self, settings: Settings):
        concept, anchor = self.sequence[0]
        replay = distill(
            self.base, AdapterStack(), self.judge, concept, anchor, [], settings.distill, settings.sampling
        )
        return concept, replay

    def train_first(self, concept: str, replay, settings: Settings, name: str):
        """Lethe's adapter for the first request, on the base, from its shared replay sets."""
        return train_adapter(
            self.base,
            AdapterStack(),
            replay.forget_images,
            replay.retain_images,
            replay.retain_labels,
            concept,
            replay.anchor,
            settings.adapter,
            settings.train,
            name,
        )

    def run_sweep(self, horizons=SWEEP, log=print) -> list[dict]:
        """Train the first request once, then evaluate it at several ODE horizons (intensity x T)."""
        s = self.settings
        concept, replay = self.first_request(s)
        result = self.train_first(concept, replay, s, "sweep")
        rows = []
        for intensity in horizons:
            result.stack.set_intensity(result.name, intensity)
            row = {
                "intensity": intensity,
                "horizon": intensity * s.adapter.horizon,
                "concept": concept,
                "anchor": replay.anchor,
                "targets": result.targets,
                **self.eval.row(self.base, result.stack, [concept], concept),
            }
            rows.append(row)
            log(f"sweep horizon {row['horizon']}: forget {row['forget_acc']:.3f} retain {row['retain_acc']}")
        return rows

    def run_ablation(self, variants: dict, log=print) -> list[dict]:
        """Each variant overrides settings of the first request; all share its replay sets."""
        concept, replay = self.first_request(self.settings)
        rows = []
        for name, (description, changes) in variants.items():
            s = self.settings.override(changes)
            result = self.train_first(concept, replay, s, name)
            row = {
                "variant": name,
                "description": description,
                "concept": concept,
                "anchor": replay.anchor,
                "targets": result.targets,
                "trainable_params": result.trainable_params,
                "train_seconds": result.seconds,
                "history": result.history[-1:],
                **self.eval.row(self.base, result.stack, [concept], concept),
            }
            rows.append(row)
            log(
                f"ablation {name}: forget {row['forget_acc']:.3f} retain {row['retain_acc']} "
                f"unchanged {row['unchanged']} kid x{row['kid_ratio']} {result.seconds:.0f}s {result.targets}"
            )
        return rows


ABLATIONS = {  # name: (what it changes, settings overrides)
    "default": ("params.yaml as shipped", {}),
    "no-smooth": ("without the smoothness term", {"train.weights.smooth": 0.0}),
    "no-start": (
        "without the retained-trajectory-start term (retained rows held at the end state only)",
        {"train.weights.start": 0.0},
    ),
    "no-trajectory": ("without either trajectory term", {"train.weights.smooth": 0.0, "train.weights.start": 0.0}),
    "retain-eps": (
        "retained rows distilled on the noise prediction (whole decoder) instead of the features",
        {"train.retain_space": "eps"},
    ),
    "drift": ("plus the L2 drift term on the adapter weights (1e-3)", {"train.weights.drift": 1e-3}),
    "sampling-grid": (
        "deployed on the training grid (4 euler steps) instead of 1 step",
        {"adapter.sampling_steps": None},
    ),
    "fixed-mid": ("fixed placement: mid_block only", {"adapter.placement": "fixed", "adapter.targets": ["mid_block"]}),
    "fixed-mid-up0": (
        "fixed placement: mid_block + up_blocks.0",
        {"adapter.placement": "fixed", "adapter.targets": ["mid_block", "up_blocks.0"]},
    ),
    "saliency-k1": ("saliency placement, k = 1", {"adapter.placement": "saliency", "adapter.k": 1}),
    "saliency-wide": (
        "saliency over every decoder block, 16x16 ones included",
        {"adapter.candidates": ["mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"]},
    ),
    "rk4": ("rk4 solver, step 0.25 (16 field evaluations)", {"adapter.solver": "rk4", "adapter.step_size": 0.25}),
}


def write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(path)  # never a half-written result file
    return path


def requests_of(rows: list[dict]) -> list[tuple[str, str | None]]:
    return [(r["concept"], r["anchor"]) for r in rows if r["step"] >= 1]


def starts_with(done: list[tuple[str, str | None]], sequence: list[tuple[str, str | None]]) -> bool:
    """True when the requests a run did begin with `sequence` (an anchor of None matches any anchor)."""
    return len(done) >= len(sequence) and all(
        c == dc and (a is None or a == da) for (c, a), (dc, da) in zip(sequence, done)
    )


def merge(
    parts: Path, out: Path, sequence: list[tuple[str, str | None]], tag: str, methods=METHODS + ("retrain",)
) -> list[dict]:
    """One results file for `sequence`: every part run on it (`tag`), plus the first len(sequence) steps of
    method runs on a longer sequence that begins with it (a step never depends on later requests); a run on
    this very sequence wins over a longer one for the same method and seed. Ordered by `methods`, then seed."""
    order = {m: i for i, m in enumerate(methods)}
    chosen: dict[tuple, tuple[bool, list[dict]]] = {}
    for f in sorted(parts.glob("continual-*.json")):
        rows = json.loads(f.read_text())
        exact = f.name.endswith(f"-{tag}.json")
        if not exact:
            if rows[0]["method"] == "retrain" or not starts_with(requests_of(rows), sequence):
                continue
            rows = [r for r in rows if r["step"] <= len(sequence)]
        key = (rows[0]["method"], rows[0]["seed"])
        if key not in chosen or (exact and not chosen[key][0]):
            chosen[key] = (exact, rows)
    ordered = sorted(chosen.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1]))
    rows = [row for _, (_, part) in ordered for row in part]
    write(rows, out)
    return rows


def results_name(sequence: str) -> str:
    """continual-10.json for the ten-request sequence, continual.json for any other."""
    return "continual-10.json" if sequence == TEN_SEQUENCE else "continual.json"


def parse_overrides(items: list[str]) -> dict:
    """`--set section.key=value` items (values parsed as YAML) as settings overrides."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def machine() -> str:
    import os
    import platform

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "part",
        nargs="?",
        default="all",
        choices=["all", "methods", "retrain", "sweep", "ablation", "floors", "merge", "tune"],
    )
    parser.add_argument("--methods", default="default", help=f"comma-separated; default: {','.join(METHODS)}")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument(
        "--sequence",
        default="five",
        help="concept:anchor pairs, comma-separated ('concept:' picks the anchor automatically), "
        f"or a name: {', '.join(SEQUENCES)}",
    )
    parser.add_argument("--forget-samples", type=int, default=256, help="samples per forgotten concept")
    parser.add_argument("--retain-samples", type=int, default=32, help="samples per retained concept")
    parser.add_argument("--eval-seed", type=int, default=777)
    parser.add_argument("--retrain-steps", type=int, help="default: baselines.retrain.steps (null = base.steps)")
    parser.add_argument("--variants", default=",".join(ABLATIONS))
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="settings file (default: the project's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one parameter (YAML value), e.g. adapter.intensity=2; repeatable",
    )
    parser.add_argument("--name", help="label of the rows and part file of a single method run with --set")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    settings = load_settings(args.params)
    try:
        settings = settings.override(parse_overrides(args.set))
    except SettingsError as error:
        raise SystemExit(f"--set: {error}") from None
    configure_torch(settings.runtime)
    info = {
        "machine": machine(),
        "command": "python benchmarks/continual.py " + " ".join(argv or sys.argv[1:]),
        "sequence": args.sequence,
    }
    if is_text_to_image_folder(settings.generator.folder):
        from benchmarks.continual_text import run

        return run(args, settings, write, lambda: round(peak_rss_mb(), 1), info)
    if args.part == "tune":
        parser.error("for the class-conditional model, tuning is benchmarks/tune.py")
    if args.methods == "default":
        args.methods = ",".join(METHODS)
    if args.name and (args.part != "methods" or "," in args.methods):
        parser.error("--name labels one method's run: use it with `methods --methods M`")
    args.sequence = SEQUENCES.get(args.sequence, args.sequence)
    sequence = sequence_of(args.sequence)
    results = Path(args.results)
    parts = results / "parts"
    tag = hashlib.sha256(args.sequence.encode()).hexdigest()[:6]
    if args.part == "merge":
        print(f"merged {len(merge(parts, results / results_name(args.sequence), sequence, tag))} rows")
        return 0
    bench = Bench(
        settings,
        sequence,
        args.forget_samples,
        args.retain_samples,
        args.eval_seed,
        parts,
        measure_base=args.part != "floors",
    )
    print(info["machine"], flush=True)
    if args.part in ("all", "methods"):
        for method in args.methods.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                path = parts / f"continual-{args.name or method}-seed{seed}-{tag}.json"
                bench.run_method(method, seed, save=lambda rows, path=path: write(rows, path), name=args.name)
    if args.part in ("all", "retrain"):
        write(bench.run_retrain(args.retrain_steps), parts / f"continual-retrain-{tag}.json")
    if args.part in ("all", "sweep"):
        write([dict(r, **info) for r in bench.run_sweep()], results / "sweep.json")
    if args.part in ("all", "ablation"):
        variants = {k: ABLATIONS[k] for k in args.variants.split(",")}
        write([dict(r, **info) for r in bench.run_ablation(variants)], results / "ablation.json")
    if args.part in ("all", "floors"):
        name = "floors-10.json" if args.sequence == TEN_SEQUENCE else "floors.json"
        write([dict(r, **info) for r in bench.run_floors()], results / name)
    if args.part in ("all", "methods", "retrain"):
        out = results / results_name(args.sequence)
        print(f"merged {len(merge(parts, out, sequence, tag))} rows into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
