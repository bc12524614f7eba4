"""dvc stage `train_base`: the base class-conditional diffusion generator (with EMA weights)."""
from __future__ import annotations

import copy
import json
import time

import torch
import torch.nn.functional as F

from models.concepts import CONCEPTS
from models.generator import Generator, build_scheduler, build_unet
from tasks.prepared_data import BalancedBatches, load_split
from tasks.runtime import configure_torch
from tasks.settings import PROJECT_ROOT, load_params


def train_base(images: torch.Tensor, labels: torch.Tensor, params: dict, image_size: int,
               log_every: int = 250) -> tuple[Generator, dict]:
    torch.manual_seed(params["seed"])
    unet = build_unet(image_size, images.shape[1], len(CONCEPTS), params["block_channels"],
                      params["layers_per_block"])
    scheduler = build_scheduler(params["train_timesteps"], params["beta_schedule"])
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=params["lr"], weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, params["lr"], total_steps=params["steps"],
                                                      pct_start=0.05)
    batches = BalancedBatches(labels, params["seed"])
    null_label = len(CONCEPTS)
    start, running = time.time(), 0.0
    for step in range(1, params["steps"] + 1):
        idx = batches.draw(params["batch_size"])
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(len(y)) < params["null_rate"]] = null_label
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        lr_schedule.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1.0 - params["ema_decay"])
        running += loss.item()
        if step % log_every == 0:
            print(f"train_base step {step}/{params['steps']} loss {running / log_every:.4f} "
                  f"({time.time() - start:.0f}s)", flush=True)
            running = 0.0
    generator = Generator(ema, scheduler, list(CONCEPTS)).eval()
    metrics = {"final_loss": round(loss.item(), 5), "parameters": sum(p.numel() for p in ema.parameters()),
               "train_seconds": round(time.time() - start, 1)}
    return generator, metrics


if __name__ == "__main__":
    configure_torch()
    params = load_params()
    images, labels = load_split("train")
    generator, metrics = train_base(images, labels, params["base"], params["data"]["image_size"])
    generator.save(PROJECT_ROOT / "artifacts" / "base")
    (PROJECT_ROOT / "metrics").mkdir(exist_ok=True)
    (PROJECT_ROOT / "metrics" / "base.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))
