"""Train: one new named ODE adapter (a field per chosen module) on top of the frozen base and the earlier adapters.

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

from lethe.models.adapter_stack import AdapterStack
from lethe.models.attacked_rows import AttackedRows
from lethe.models.distill_targets import DistillTargets, ReplayRows
from lethe.models.generator import Generator
from lethe.models.losses import feature_retention, noise_matching, trajectory_smoothness, trajectory_start
from lethe.models.ode_adapter import ODEAdapter, ODEConfig
from lethe.models.saliency import block_saliency, top_k
from lethe.models.unet_split import in_decoder, last_stage, splittable
from lethe.tasks.settings import AdapterSettings, TrainSettings


@dataclass
class TrainResult:
    stack: AdapterStack
    name: str  # the new adapter's name in `stack`
    trainable_params: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    saliency: dict[str, float] = field(default_factory=dict)


def batch_split(train: TrainSettings) -> tuple[int, int]:
    """Forget and retain rows per batch (the settings guarantee both are at least one)."""
    n_forget = max(1, round(train.batch_size * train.forget_fraction))
    return n_forget, train.batch_size - n_forget


def build_targets(
    generator: Generator,
    teacher: AdapterStack,
    forget_images,
    retain_images,
    retain_labels,
    concept: str,
    anchor: str,
    train: TrainSettings,
    retain_targets: bool = True,
) -> DistillTargets:
    """The pool of distillation rows every method of a step trains on (`train.pool_rows`, split like a batch);
    without `retain_targets`, the teacher's predictions for retained rows are skipped."""
    concept_label, anchor_label = generator.labels([concept, anchor])
    rows = ReplayRows.from_labels(forget_images, retain_images, retain_labels, concept_label, anchor_label)
    return build_pool(generator, teacher, rows, train, retain_targets)


def build_pool(
    generator, teacher: AdapterStack, rows: ReplayRows, train: TrainSettings, retain_targets: bool = True
) -> DistillTargets:
    """The pool from replay rows of any conditioning (`train.pool_rows` rows, split like a batch)."""
    n_forget, _ = batch_split(train)
    forget_rows = max(1, round(train.pool_rows * n_forget / train.batch_size))
    return DistillTargets.from_rows(
        generator,
        teacher,
        rows,
        forget_rows,
        max(1, train.pool_rows - forget_rows),
        train.seed,
        retain_targets=retain_targets,
    )


def choose_targets(
    generator: Generator, teacher: AdapterStack, targets: DistillTargets, adapter: AdapterSettings
) -> tuple[list[str], dict[str, float]]:
    """The modules that get this request's adapter, and the saliency scores behind the choice."""
    if adapter.placement == "fixed":
        return list(adapter.targets), {}
    idx = torch.arange(min(adapter.saliency_rows, targets.n_forget))
    scores = block_saliency(
        generator,
        teacher,
        list(adapter.candidates),
        targets.xt[idx],
        targets.t[idx],
        targets.student_cond[idx],
        targets.teacher_eps[idx],
    )
    return top_k(scores, adapter.k), scores


def ode_config(adapter: AdapterSettings) -> ODEConfig:
    return ODEConfig(
        adapter.solver,
        adapter.horizon,
        adapter.step_size,
        adapter.hidden,
        adapter.sampling_steps,
        adapter.time_dependent,
    )


def new_student(
    generator: Generator, teacher: AdapterStack, adapter: AdapterSettings, name: str, targets: list[str]
) -> AdapterStack:
    """The teacher's stack, frozen, plus the adapter `name`: one fresh (identity) field per target."""
    student = copy.deepcopy(teacher)
    student.freeze()
    config = ode_config(adapter)
    student.add(name, {t: ODEAdapter(generator.feature_channels(t), config) for t in targets})
    return student


def train_adapter(
    generator: Generator,
    teacher: AdapterStack,
    forget_images: torch.Tensor,
    retain_images: torch.Tensor,
    retain_labels: torch.Tensor,
    concept: str,
    anchor: str,
    adapter: AdapterSettings,
    train: TrainSettings,
    name: str,
    progress=None,
) -> TrainResult:
    """Train the adapter `name` (the request's stable name in the stack) on top of `teacher`, for a
    class-conditional generator: replay images with concept labels."""
    concept_label, anchor_label = generator.labels([concept, anchor])
    rows = ReplayRows.from_labels(forget_images, retain_images, retain_labels, concept_label, anchor_label)
    return train_on_rows(generator, teacher, rows, adapter, train, name, progress)


def train_on_rows(
    generator,
    teacher: AdapterStack,
    rows: ReplayRows,
    adapter: AdapterSettings,
    train: TrainSettings,
    name: str,
    progress=None,
) -> TrainResult:
    """Train the adapter `name` from replay rows of either generator kind (`replay.rows(generator)`)."""
    start = time.time()
    generator.requires_grad_(False)
    pool = build_pool(generator, teacher, rows, train, retain_targets=train.retain_space == "eps")
    return train_on_pool(generator, teacher, pool, adapter, train, name, progress, start, rows)


def attacked_rows(generator, teacher: AdapterStack, rows: ReplayRows | None, train: TrainSettings):
    """The adversarial rows of `train.adversarial`, or None where they are off or do not apply (no replay
    rows to attack with, or a text-to-image generator: its attack is on a token embedding, not a class row)."""
    if not train.adversarial.rounds or rows is None or generator.kind != "class-conditional":
        return None
    anchor = rows.forget_teacher.unique()
    if len(anchor) != 1:
        raise ValueError("adversarial rows need one anchor for the whole forget set")
    return AttackedRows(generator, teacher, rows.forget_x0, int(anchor[0]), train.adversarial.pool_rows)


def train_on_pool(
    generator,
    teacher: AdapterStack,
    pool: DistillTargets,
    adapter: AdapterSettings,
    train: TrainSettings,
    name: str,
    progress=None,
    start: float | None = None,
    rows: ReplayRows | None = None,
) -> TrainResult:
    """Train the adapter `name` on a built pool: any generator kind whose `predict_noise` takes the pool's
    conditioning (labels, or text features for a text-to-image generator). The split UNet (encoder cached,
    retained rows stopped at the deepest new field) is used where the UNet allows it. With `rows` (the replay
    the pool was built from) and `train.adversarial.rounds`, the student is also trained against the
    recovery attack (`models.attacked_rows`)."""
    weights = train.weights
    adv = train.adversarial
    start = time.time() if start is None else start
    torch.manual_seed(train.seed)
    rng = torch.Generator().manual_seed(train.seed)
    generator.requires_grad_(False)
    targets, saliency = choose_targets(generator, teacher, pool, adapter)
    if splittable(generator.unet) and all(in_decoder(t) for t in targets):
        pool.cache_encoder(generator, teacher)  # the student's encoder is the teacher's: frozen
    student = new_student(generator, teacher, adapter, name, targets)
    trainable = [p for p in student.adapters[name].parameters()]
    initial = [p.detach().clone() for p in trainable]
    optimiser = torch.optim.Adam(trainable, lr=train.lr)
    n_forget, n_retain = batch_split(train)
    keys = [(name, t) for t in targets]
    grids = {k: student.field(*k).grid(student.slots[name].intensity) for k in keys}
    retain_rows = torch.arange(n_forget, n_forget + n_retain)
    history = []
    # features: retained rows only need the decoder down to the deepest new field (the encoder is cached)
    stop = (
        last_stage(generator.unet, targets) if pool.encoded is not None and train.retain_space == "features" else None
    )
    retain_weight = weights.retain_features if train.retain_space == "features" else weights.retain
    weight_of = {
        "forget": weights.forget,
        "retain": retain_weight,
        "smooth": weights.smooth,
        "start": weights.start,
        "drift": weights.drift,
        "adversarial": weights.adversarial,
    }
    attacked = attacked_rows(generator, teacher, rows, train)
    attack_at = (
        {max(1, train.steps * r // (adv.rounds + 1)): r for r in range(1, adv.rounds + 1)}
        if attacked is not None
        else {}
    )
    for step in range(1, train.steps + 1):
        if step in attack_at:  # attack the student as it stands, at the intensity it will be deployed with
            round_ = attack_at[step]
            final = attacked.attack(
                student, name, adapter.intensity, adv.attack_steps, adv.attack_lr, adv.attack_batch, train.seed + round_
            )
            history.append({"step": step, "attack_round": round_, "attack_loss": round(final, 5)})
        idx = pool.draw(n_forget, n_retain, rng)
        target = pool.teacher_eps[idx]
        if stop is not None:  # every row down to the deepest new field, then only forget rows onwards
            state, paths = generator.decode_to(pool.encoded.rows(idx), stop, student, record=(name,))
            student_eps, _ = generator.decode(state.rows(torch.arange(n_forget)), student)
        elif pool.encoded is not None:
            student_eps, paths = generator.decode(pool.encoded.rows(idx), student, record=(name,))
        else:
            student_eps, paths = generator.predict_noise(
                pool.xt[idx], pool.t[idx], pool.student_cond[idx], student, record=(name,)
            )
        if train.retain_space == "features":
            retain = sum(feature_retention(paths[k], retain_rows) for k in keys)
        else:
            retain = noise_matching(student_eps[n_forget:], target[n_forget:])
        losses = {
            "forget": noise_matching(student_eps[:n_forget], target[:n_forget]),
            "retain": retain,
            "smooth": sum(trajectory_smoothness(paths[k], grids[k]) for k in keys),
            "start": sum(trajectory_start(paths[k], retain_rows) for k in keys),
        }
        if attacked is not None and len(attacked):
            losses["adversarial"] = attacked.loss(student, name, adapter.intensity, adv.rows, rng)
        if weights.drift:
            losses["drift"] = sum((p - p0).pow(2).sum() for p, p0 in zip(trainable, initial))
        loss = sum(weight_of[k] * v for k, v in losses.items())
        if not torch.isfinite(loss):  # a diverged adapter must fail its request, never reach the registry
            terms = ", ".join(f"{k} {float(v.detach()):.3g}" for k, v in losses.items())
            raise FloatingPointError(f"training diverged at step {step} of {train.steps}: loss terms {terms}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 25 == 0 or step == train.steps:
            history.append({"step": step, **{k: round(float(v.detach()), 5) for k, v in losses.items()}})
            if progress:
                progress(step, train.steps, history[-1])
    student.freeze()
    # trained on [0, T]; run on [0, intensity * T] (LEGATO: the horizon sets forgetting strength)
    student.set_intensity(name, adapter.intensity)
    params_count = sum(p.numel() for p in student.adapters[name].parameters())
    return TrainResult(student, name, params_count, round(time.time() - start, 1), history, targets, saliency)


train_adapter_task = task(train_on_rows, name="train-ode-adapter", cache_policy=NO_CACHE)
