"""dvc stage `train_judge`: the CNN that names concepts, scored on the real test split."""
from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from models.concepts import CONCEPTS
from models.judge import Judge
from tasks.prepared_data import BalancedBatches, load_split
from tasks.runtime import configure_torch
from tasks.settings import PROJECT_ROOT, load_params


def shift(x: torch.Tensor, rng: torch.Generator, pixels: int = 1) -> torch.Tensor:
    """Random translation by up to `pixels`, so the judge does not rely on exact placement."""
    dx, dy = (torch.randint(-pixels, pixels + 1, (2,), generator=rng)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy_per_concept(judge: Judge, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    predicted = judge.classify(images)
    return [float((predicted[labels == c] == c).float().mean()) for c in range(len(judge.concepts))]


def train_judge(images, labels, params: dict, image_size: int, log_every: int = 500) -> Judge:
    torch.manual_seed(params["seed"])
    rng = torch.Generator().manual_seed(params["seed"])
    judge = Judge(list(CONCEPTS), image_size, images.shape[1], params["width"], params["features"])
    steps = params["epochs"] * len(labels) // params["batch_size"]
    optimiser = torch.optim.AdamW(judge.parameters(), lr=params["lr"], weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, params["lr"], total_steps=steps)
    batches = BalancedBatches(labels, params["seed"])
    judge.train()
    start = time.time()
    for step in range(1, steps + 1):
        idx = batches.draw(params["batch_size"])
        loss = F.cross_entropy(judge(shift(images[idx], rng)), labels[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        lr_schedule.step()
        if step % log_every == 0:
            print(f"train_judge step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    return judge.eval().requires_grad_(False)


if __name__ == "__main__":
    configure_torch()
    params = load_params()
    judge = train_judge(*load_split("train"), params["judge"], params["data"]["image_size"])
    judge.save(PROJECT_ROOT / "artifacts" / "judge")
    test_images, test_labels = load_split("test")
    per_concept = accuracy_per_concept(judge, test_images, test_labels)
    metrics = {"test_accuracy_mean": round(sum(per_concept) / len(per_concept), 4),
               "test_accuracy": {c: round(a, 4) for c, a in zip(CONCEPTS, per_concept)}}
    (PROJECT_ROOT / "metrics").mkdir(exist_ok=True)
    (PROJECT_ROOT / "metrics" / "judge.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))
