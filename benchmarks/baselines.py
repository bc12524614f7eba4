"""Baselines of the continual benchmark. Each trains on the same distillation pool (`models.distill_targets`:
the same replay images, noise, timesteps and teacher targets) and the same seeded batches as Lethe's adapters.

- `dfr-ft` (Distill-Forget-Repeat): the whole UNet is fine-tuned per request with the forget and
  retain-distillation losses plus an L2 penalty pulling the weights back to the previous model's.
- `esd` (Erased Stable Diffusion): the student, asked for the concept, is trained towards negative guidance
  eps(x, null) - eta * (eps(x, c) - eps(x, null)) of the frozen previous model; forget rows only, no retain
  term (as in ESD). `baselines.esd.variant` picks the weights: `conditioning` (the counterpart of ESD-x for a
  model whose conditioning is a class embedding: that embedding and the projections that read it,
  cross-attention on a text model) or `u` (every weight).
- `fade-lora` (FADE/SPARE): LoRA (peft) on the conv layers with the highest forget-loss weight saliency
  |grad * weight|, ranked among the convs of Lethe's candidate blocks (`scope: candidates`) or all of them,
  taken in that order while their LoRA fits in a parameter budget matched to Lethe's adapter per request,
  trained with the same forget (self-distillation onto the anchor) and retain losses; merged into the weights
  after the request, so the next request starts from the merged model.
- `retrain`: the base recipe (`tasks.train_base`) run from scratch on the training data minus every forgotten
  concept; the gold standard, trained once at the end of the sequence.
"""

from __future__ import annotations

import copy
import time

import torch

from lethe.models.distill_targets import DistillTargets
from lethe.models.generator import Generator
from lethe.models.losses import noise_matching
from lethe.tasks.settings import BaseTrainingSettings, Settings
from lethe.tasks.steps.train_adapter import batch_split


def _frozen(generator: Generator) -> Generator:
    generator.unet.eval().requires_grad_(False)
    return generator


def _optimise(optimiser, steps: int, batch_loss, progress=None) -> None:
    """The training loop every baseline shares; `batch_loss()` draws a batch and returns its loss."""
    for step in range(1, steps + 1):
        loss = batch_loss()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if progress and (step % 25 == 0 or step == steps):
            progress(step, steps, {"loss": float(loss.detach())})


def train_full_finetune(
    generator: Generator, pool: DistillTargets, settings: Settings, progress=None
) -> tuple[Generator, int, float]:
    """dfr-ft: a fine-tuned copy of `generator` (the teacher, left untouched); returns (student, trainable, s).
    Reads `train` (steps, batches, loss weights) and `baselines.dfr_ft` (learning rate, drift weight)."""
    train, recipe = settings.train, settings.baselines.dfr_ft
    l2 = recipe.drift_l2
    torch.manual_seed(train.seed)
    rng = torch.Generator().manual_seed(train.seed)
    student = copy.deepcopy(generator)
    student.unet.requires_grad_(True).train()
    start_weights = [p.detach().clone() for p in student.unet.parameters()]
    optimiser = torch.optim.Adam(student.unet.parameters(), lr=recipe.lr)
    n_forget, n_retain = batch_split(train)
    start = time.time()

    def batch_loss():
        idx = pool.draw(n_forget, n_retain, rng)
        eps, _ = student.predict_noise(pool.xt[idx], pool.t[idx], pool.student_cond[idx])
        target = pool.teacher_eps[idx]
        drift = sum((p - p0).pow(2).sum() for p, p0 in zip(student.unet.parameters(), start_weights))
        return (
            train.weights.forget * noise_matching(eps[:n_forget], target[:n_forget])
            + train.weights.retain * noise_matching(eps[n_forget:], target[n_forget:])
            + l2 * drift
        )

    _optimise(optimiser, train.steps, batch_loss, progress)
    trainable = sum(p.numel() for p in student.unet.parameters())
    return _frozen(student), trainable, round(time.time() - start, 1)


@torch.no_grad()
def negative_guidance_targets(teacher: Generator, pool: DistillTargets, eta: float, batch_size: int) -> torch.Tensor:
    """ESD's target for every forget row: eps(x, null) - eta * (eps(x, c) - eps(x, null)) of the teacher."""
    rows = torch.arange(pool.n_forget)
    out = []
    for chunk in rows.split(batch_size):
        xt, t, labels = pool.xt[chunk], pool.t[chunk], pool.student_cond[chunk]
        conditional, _ = teacher.predict_noise(xt, t, labels)
        unconditional, _ = teacher.predict_noise(xt, t, torch.full_like(labels, teacher.null_label))
        out.append(unconditional - eta * (conditional - unconditional))
    return torch.cat(out)


def train_esd(
    generator: Generator, pool: DistillTargets, settings: Settings, progress=None
) -> tuple[Generator, int, float]:
    """esd: sequential fine-tune of every weight with negative guidance on the forget rows. Reads `train`
    (steps, batch size, seed) and `baselines.esd` (learning rate, eta)."""
    train, recipe = settings.train, settings.baselines.esd
    torch.manual_seed(train.seed)
    rng = torch.Generator().manual_seed(train.seed)
    start = time.time()
    targets = negative_guidance_targets(generator, pool, recipe.eta, settings.sampling.batch_size)
    student = copy.deepcopy(generator)
    student.unet.train()
    weights = esd_weights(student.unet, recipe.variant)
    student.unet.requires_grad_(False)
    for p in weights:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(weights, lr=recipe.lr)

    def batch_loss():
        idx = torch.randint(pool.n_forget, (train.batch_size,), generator=rng)
        eps, _ = student.predict_noise(pool.xt[idx], pool.t[idx], pool.student_cond[idx])
        return noise_matching(eps, targets[idx])

    _optimise(optimiser, train.steps, batch_loss, progress)
    trainable = sum(p.numel() for p in weights)
    return _frozen(student), trainable, round(time.time() - start, 1)


CONDITIONING = ("class_embedding", "time_emb_proj", "attn2")  # what carries the condition into the UNet


def esd_weights(unet: torch.nn.Module, variant: str) -> list[torch.nn.Parameter]:
    """ESD's trainable weights: every one (`u`) or those on the conditioning path (`conditioning`)."""
    if variant == "u":
        return list(unet.parameters())
    found = [p for n, p in unet.named_parameters() if any(part in n.split(".") for part in CONDITIONING)]
    if not found:
        raise ValueError("this UNet has no conditioning weights (class_embedding, time_emb_proj, attn2)")
    return found


def weight_saliency(
    generator: Generator, pool: DistillTargets, rows: int, within: list[str] | None = None
) -> dict[str, float]:
    """FADE's localisation: mean |grad * weight| of the forget loss for every conv layer of the UNet (or of
    the blocks named in `within`)."""
    convs = {
        n: m
        for n, m in generator.unet.named_modules()
        if isinstance(m, torch.nn.Conv2d) and (within is None or any(n.startswith(b + ".") for b in within))
    }
    idx = torch.arange(min(rows, pool.n_forget))
    unet = generator.unet
    unet.requires_grad_(True)
    try:
        unet.zero_grad(set_to_none=True)
        eps, _ = generator.predict_noise(pool.xt[idx], pool.t[idx], pool.student_cond[idx])
        noise_matching(eps, pool.teacher_eps[idx]).backward()
        scores = {n: float((m.weight.grad * m.weight.detach()).abs().mean()) for n, m in convs.items()}
    finally:
        unet.zero_grad(set_to_none=True)
        unet.requires_grad_(False)
    return scores


def lora_size(conv: torch.nn.Conv2d, rank: int) -> int:
    """Trainable parameters of a rank-`rank` LoRA on `conv`: A (rank x in*kh*kw) and B (out x rank)."""
    kh, kw = conv.kernel_size
    return rank * (conv.in_channels * kh * kw + conv.out_channels)


def lora_modules(
    unet: torch.nn.Module, scores: dict[str, float], rank: int, count: int | None, budget: int | None
) -> list[str]:
    """The convs to adapt, most salient first (conv_in and conv_out never): the top `count`, or every conv
    whose LoRA still fits in what is left of `budget` parameters, so the budget is matched from below."""
    ranked = [n for n in sorted(scores, key=scores.get, reverse=True) if n not in ("conv_in", "conv_out")]
    if count is not None:
        return ranked[:count]
    convs, chosen, left = dict(unet.named_modules()), [], budget
    for name in ranked:
        size = lora_size(convs[name], rank)
        if size <= left:
            chosen.append(name)
            left -= size
    if not chosen:
        raise ValueError(f"no salient conv's rank-{rank} LoRA fits in a budget of {budget} parameters")
    return chosen


def train_lora(generator: Generator, pool: DistillTargets, settings: Settings, progress=None):
    """fade-lora: LoRA on the most salient convs (`lora_modules`: the top `modules`, or as many as `budget`
    parameters hold); returns (merged student, trainable, s, modules)."""
    from peft import LoraConfig, get_peft_model  # benchmark-only dependency

    train, recipe = settings.train, settings.baselines.fade_lora
    rank, n_modules = recipe.rank, recipe.modules
    torch.manual_seed(train.seed)
    rng = torch.Generator().manual_seed(train.seed)
    start = time.time()
    within = list(settings.adapter.candidates) if recipe.scope == "candidates" else None
    scores = weight_saliency(generator, pool, recipe.saliency_rows, within)
    modules = lora_modules(generator.unet, scores, rank, n_modules, recipe.budget)
    student = copy.deepcopy(generator)
    peft_unet = get_peft_model(student.unet, LoraConfig(r=rank, lora_alpha=rank, target_modules=modules))
    lora = [p for n, p in peft_unet.named_parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(lora, lr=recipe.lr)
    n_forget, n_retain = batch_split(train)

    def batch_loss():
        idx = pool.draw(n_forget, n_retain, rng)
        eps, _ = student.predict_noise(pool.xt[idx], pool.t[idx], pool.student_cond[idx])
        target = pool.teacher_eps[idx]
        return train.weights.forget * noise_matching(
            eps[:n_forget], target[:n_forget]
        ) + train.weights.retain * noise_matching(eps[n_forget:], target[n_forget:])

    _optimise(optimiser, train.steps, batch_loss, progress)
    trainable = sum(p.numel() for p in lora)
    student.unet = peft_unet.merge_and_unload()
    return _frozen(student), trainable, round(time.time() - start, 1), modules


def retrain_without(
    images: torch.Tensor,
    labels: torch.Tensor,
    forgotten_labels: list[int],
    base: BaseTrainingSettings,
    image_size: int,
    steps: int | None,
) -> tuple[Generator, dict]:
    """retrain: the base recipe on the training split minus every forgotten concept (`steps` of it, or all)."""
    from lethe.tasks.stages.train_base import train_base

    keep = ~torch.isin(labels, torch.tensor(forgotten_labels))
    steps = steps or base.steps
    recipe = base.model_copy(update={"steps": steps, "log_every": max(1, steps // 6)})
    generator, metrics, _ = train_base(images[keep], labels[keep], recipe, image_size)
    return generator, metrics
