"""dvc stage `train_judge`: the CNN that names concepts, scored on the real test split."""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from lethe.models.concepts import CONCEPTS
from lethe.models.judge import Judge
from lethe.tasks.settings import JudgeTrainingSettings
from lethe.tasks.stages.entry import stage_settings, write_curve, write_metrics
from lethe.tasks.stores.prepared_splits import BalancedBatches, load_split


def shift(x: torch.Tensor, rng: torch.Generator, pixels: int) -> torch.Tensor:
    """Random translation by up to `pixels`, so the judge does not rely on exact placement."""
    dx, dy = (torch.randint(-pixels, pixels + 1, (2,), generator=rng)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy_per_concept(judge: Judge, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    predicted = judge.classify(images)
    return [float((predicted[labels == c] == c).float().mean()) for c in range(len(judge.concepts))]


def train_judge(images, labels, recipe: JudgeTrainingSettings, image_size: int) -> tuple[Judge, list[dict]]:
    """The judge and its training curve (the batch loss every `recipe.log_every` steps)."""
    torch.manual_seed(recipe.seed)
    rng = torch.Generator().manual_seed(recipe.seed)
    judge = Judge(list(CONCEPTS), image_size, images.shape[1], recipe.width, recipe.features)
    steps = recipe.epochs * len(labels) // recipe.batch_size
    optimiser = torch.optim.AdamW(judge.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.lr, total_steps=steps)
    batches = BalancedBatches(labels, recipe.seed)
    judge.train()
    start, curve = time.time(), []
    for step in range(1, steps + 1):
        idx = batches.draw(recipe.batch_size)
        loss = F.cross_entropy(judge(shift(images[idx], rng, recipe.shift_pixels)), labels[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        lr_schedule.step()
        if step % recipe.log_every == 0:
            curve.append({"step": step, "loss": round(loss.item(), 5)})
            print(f"train_judge step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    return judge.eval().requires_grad_(False), curve


if __name__ == "__main__":
    settings = stage_settings(__doc__)
    judge, curve = train_judge(*load_split("train", settings.paths.prepared), settings.judge, settings.data.image_size)
    judge.save(settings.paths.judge)
    test_images, test_labels = load_split("test", settings.paths.prepared)
    per_concept = accuracy_per_concept(judge, test_images, test_labels)
    metrics = {
        "test_accuracy_mean": round(sum(per_concept) / len(per_concept), 4),
        "test_accuracy": {c: round(a, 4) for c, a in zip(CONCEPTS, per_concept)},
    }
    write_metrics(settings.paths.metrics / "judge.json", metrics)
    write_curve(settings.paths.metrics / "train_judge_curve.csv", curve)
    print(json.dumps(metrics))
