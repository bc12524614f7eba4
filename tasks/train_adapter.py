"""Train: one new ODE adapter per chosen module on top of the frozen base and the earlier adapters.

Each batch mixes forget rows (teacher samples of the concept; the student, asked for the concept, must predict
what the teacher predicts for the anchor) and retain rows (replay of every other concept; the student must
predict what the teacher predicts). The new adapters' ODE paths carry the trajectory-consistency terms.
Where the adapters go is either fixed (`adapter.targets`) or chosen per request by forget-loss saliency over
`adapter.candidates` (`adapter.placement: saliency`). The teacher's targets and the frozen encoder are
computed once per training row (`models.distill_targets`), so a step runs only the UNet's decoder.

Retained rows are distilled either on the noise prediction (`train.retain_space: eps`) or on the features
the new adapters rewrite (`features`, the default): below a new adapter the student is the teacher, so
keeping those features is keeping the teacher's output. A step then runs the whole batch down to the
deepest new adapter's decoder stage and only the forget rows through the rest (see DECISIONS.md).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.adapter_stack import AdapterStack
from models.distill_targets import DistillTargets
from models.generator import Generator
from models.losses import feature_retention, noise_matching, trajectory_smoothness, trajectory_start
from models.ode_adapter import ODEAdapter, ODEConfig
from models.saliency import block_saliency, top_k
from models.unet_split import in_decoder, last_stage, splittable

PLACEMENTS = ("fixed", "saliency")
RETAIN_SPACES = ("features", "eps")


@dataclass
class TrainResult:
    stack: AdapterStack
    new_indices: list[int]
    trainable_params: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    saliency: dict[str, float] = field(default_factory=dict)


def batch_split(train: dict) -> tuple[int, int]:
    """Forget and retain rows per batch."""
    n_forget = max(1, round(train["batch_size"] * train["forget_fraction"]))
    if n_forget >= train["batch_size"]:
        raise ValueError("train.forget_fraction leaves no retain rows in a batch")
    return n_forget, train["batch_size"] - n_forget


def build_targets(generator: Generator, teacher: AdapterStack, forget_images, retain_images, retain_labels,
                  concept: str, anchor: str, train: dict, retain_targets: bool = True) -> DistillTargets:
    """The pool of distillation rows every method of a step trains on (`train.pool_rows`, split like a batch);
    without `retain_targets`, the teacher's predictions for retained rows are skipped."""
    concept_label, anchor_label = generator.labels([concept, anchor])
    n_forget, n_retain = batch_split(train)
    rows = train.get("pool_rows") or train["steps"] * train["batch_size"]
    forget_rows = max(1, round(rows * n_forget / train["batch_size"]))
    return DistillTargets.build(generator, teacher, forget_images, retain_images, retain_labels, concept_label,
                                anchor_label, forget_rows, max(1, rows - forget_rows), train["seed"],
                                retain_targets=retain_targets)


def choose_targets(generator: Generator, teacher: AdapterStack, targets: DistillTargets, adapter: dict,
                   rows: int = 64) -> tuple[list[str], dict[str, float]]:
    """The modules that get this request's adapters, and the saliency scores behind the choice."""
    placement = adapter.get("placement", "fixed")
    if placement not in PLACEMENTS:
        raise ValueError(f"adapter.placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "fixed":
        return list(adapter["targets"]), {}
    idx = torch.arange(min(rows, targets.n_forget))
    scores = block_saliency(generator, teacher, list(adapter["candidates"]), targets.xt[idx], targets.t[idx],
                            targets.student_labels[idx], targets.teacher_eps[idx])
    return top_k(scores, int(adapter["k"])), scores


def new_student(generator: Generator, teacher: AdapterStack, adapter_params: dict, label: str,
                targets: list[str] | None = None):
    """The teacher's stack, frozen, plus one fresh (identity) adapter per target."""
    student = copy.deepcopy(teacher)
    student.freeze()
    config = ODEConfig(adapter_params["solver"], adapter_params["horizon"], adapter_params["step_size"],
                       adapter_params["hidden"], adapter_params.get("sampling_steps"))
    new = [student.add(target, ODEAdapter(generator.feature_channels(target), config), label=label)
           for target in (targets or adapter_params["targets"])]
    return student, new


def train_adapter(generator: Generator, teacher: AdapterStack, forget_images: torch.Tensor,
                  retain_images: torch.Tensor, retain_labels: torch.Tensor, concept: str, anchor: str,
                  params: dict, label: str = "", progress=None) -> TrainResult:
    """`params` holds the `adapter` and `train` sections of params.yaml."""
    train, weights = params["train"], params["train"]["weights"]
    retain_space = train.get("retain_space", "eps")
    if retain_space not in RETAIN_SPACES:
        raise ValueError(f"train.retain_space must be one of {RETAIN_SPACES}, got {retain_space!r}")
    start = time.time()
    torch.manual_seed(train["seed"])
    rng = torch.Generator().manual_seed(train["seed"])
    generator.requires_grad_(False)
    pool = build_targets(generator, teacher, forget_images, retain_images, retain_labels, concept, anchor, train,
                         retain_targets=retain_space == "eps")
    targets, saliency = choose_targets(generator, teacher, pool, params["adapter"])
    if splittable(generator.unet) and all(in_decoder(t) for t in targets):
        pool.cache_encoder(generator, teacher)  # the student's encoder is the teacher's: frozen
    student, new = new_student(generator, teacher, params["adapter"], label, targets)
    trainable = [p for i in new for p in student.adapters[i].parameters()]
    initial = [p.detach().clone() for p in trainable]
    optimiser = torch.optim.Adam(trainable, lr=train["lr"])
    n_forget, n_retain = batch_split(train)
    grids = {i: student.adapters[i].grid(student.slots[i].intensity) for i in new}
    retain_rows = torch.arange(n_forget, n_forget + n_retain)
    history = []
    # features: retained rows only need the decoder down to the deepest new adapter (the encoder is cached)
    stop = last_stage(generator.unet, targets) if pool.encoded is not None and retain_space == "features" else None
    retain_weight = weights["retain"]
    if retain_space == "features":
        retain_weight = weights.get("retain_features", retain_weight)
    weight_of = {**weights, "retain": retain_weight}
    for step in range(1, train["steps"] + 1):
        idx = pool.draw(n_forget, n_retain, rng)
        target = pool.teacher_eps[idx]
        if stop is not None:  # every row down to the deepest new adapter, then only forget rows onwards
            state, paths = generator.decode_to(pool.encoded.rows(idx), stop, student, record=tuple(new))
            student_eps, _ = generator.decode(state.rows(torch.arange(n_forget)), student)
        elif pool.encoded is not None:
            student_eps, paths = generator.decode(pool.encoded.rows(idx), student, record=tuple(new))
        else:
            student_eps, paths = generator.predict_noise(pool.xt[idx], pool.t[idx], pool.student_labels[idx],
                                                         student, record=tuple(new))
        if retain_space == "features":
            retain = sum(feature_retention(paths[i], retain_rows) for i in new)
        else:
            retain = noise_matching(student_eps[n_forget:], target[n_forget:])
        losses = {
            "forget": noise_matching(student_eps[:n_forget], target[:n_forget]),
            "retain": retain,
            "smooth": sum(trajectory_smoothness(paths[i], grids[i]) for i in new),
            "start": sum(trajectory_start(paths[i], retain_rows) for i in new),
        }
        if weights.get("drift", 0.0):
            losses["drift"] = sum((p - p0).pow(2).sum() for p, p0 in zip(trainable, initial))
        loss = sum(weight_of[k] * v for k, v in losses.items())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 25 == 0 or step == train["steps"]:
            history.append({"step": step, **{k: round(float(v.detach()), 5) for k, v in losses.items()}})
            if progress:
                progress(step, train["steps"], history[-1])
    student.freeze()
    for i in new:  # trained on [0, T]; run on [0, intensity * T] (LEGATO: the horizon sets forgetting strength)
        student.set_intensity(i, params["adapter"].get("intensity", 1.0))
    params_count = sum(p.numel() for i in new for p in student.adapters[i].parameters())
    return TrainResult(student, new, params_count, round(time.time() - start, 1), history, targets, saliency)


train_adapter_task = task(train_adapter, name="train-ode-adapter", cache_policy=NO_CACHE)
