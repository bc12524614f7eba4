"""dvc stage `train_base`: the base class-conditional diffusion generator (with EMA weights)."""

from __future__ import annotations

import copy
import json
import time

import torch
import torch.nn.functional as F

from lethe.models.concepts import CONCEPTS
from lethe.models.generator import Generator, build_scheduler, build_unet
from lethe.tasks.settings import BaseTrainingSettings
from lethe.tasks.stages.entry import stage_settings, write_curve, write_metrics
from lethe.tasks.stores.prepared_splits import BalancedBatches, load_split


def train_base(
    images: torch.Tensor, labels: torch.Tensor, recipe: BaseTrainingSettings, image_size: int
) -> tuple[Generator, dict, list[dict]]:
    """The EMA generator, its metrics and its training curve (mean loss every `recipe.log_every` steps)."""
    torch.manual_seed(recipe.seed)
    unet = build_unet(
        image_size, images.shape[1], len(CONCEPTS), recipe.block_channels, recipe.layers_per_block, recipe.norm_groups
    )
    scheduler = build_scheduler(recipe.train_timesteps, recipe.beta_schedule)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, recipe.lr, total_steps=recipe.steps, pct_start=recipe.warmup_fraction
    )
    batches = BalancedBatches(labels, recipe.seed)
    null_label = len(CONCEPTS)
    start, running, curve = time.time(), 0.0, []
    for step in range(1, recipe.steps + 1):
        idx = batches.draw(recipe.batch_size)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(len(y)) < recipe.null_rate] = null_label
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        lr_schedule.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1.0 - recipe.ema_decay)
        running += loss.item()
        if step % recipe.log_every == 0:
            curve.append({"step": step, "loss": round(running / recipe.log_every, 5)})
            print(
                f"train_base step {step}/{recipe.steps} loss {curve[-1]['loss']:.4f} ({time.time() - start:.0f}s)",
                flush=True,
            )
            running = 0.0
    generator = Generator(ema, scheduler, list(CONCEPTS)).eval()
    metrics = {
        "final_loss": round(loss.item(), 5),
        "parameters": sum(p.numel() for p in ema.parameters()),
        "train_seconds": round(time.time() - start, 1),
    }
    return generator, metrics, curve


if __name__ == "__main__":
    settings = stage_settings(__doc__)
    images, labels = load_split("train", settings.paths.prepared)
    generator, metrics, curve = train_base(images, labels, settings.base, settings.data.image_size)
    generator.save(settings.paths.base)
    write_metrics(settings.paths.metrics / "base.json", metrics)
    write_curve(settings.paths.metrics / "train_base_curve.csv", curve)
    print(json.dumps(metrics))
