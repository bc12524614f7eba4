"""Train: one new ODE adapter per target module on top of the frozen base and the earlier adapters.

Each batch mixes forget rows (teacher samples of the concept; the student, asked for the concept, must predict
what the teacher predicts for the anchor) and retain rows (replay of every other concept; the student must
predict what the teacher predicts). The new adapters' ODE paths carry the trajectory-consistency terms.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.adapter_stack import AdapterStack
from models.generator import Generator
from models.losses import noise_matching, trajectory_smoothness, trajectory_start
from models.ode_adapter import ODEAdapter, ODEConfig


@dataclass
class TrainResult:
    stack: AdapterStack
    new_indices: list[int]
    trainable_params: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def new_student(generator: Generator, teacher: AdapterStack, adapter_params: dict, label: str):
    """The teacher's stack, frozen, plus one fresh (identity) adapter per target."""
    student = copy.deepcopy(teacher)
    student.freeze()
    config = ODEConfig(adapter_params["solver"], adapter_params["horizon"], adapter_params["step_size"],
                       adapter_params["hidden"])
    new = [student.add(target, ODEAdapter(generator.feature_channels(target), config), label=label)
           for target in adapter_params["targets"]]
    return student, new


def noised_batch(generator: Generator, forget_images, retain_images, retain_labels, concept_label: int,
                 anchor_label: int, n_forget: int, n_retain: int, rng: torch.Generator):
    """One training batch: forget rows first, then retain rows, noised at random timesteps.
    Returns (x_t, t, student labels, teacher labels): forget rows ask the student for the concept and the
    teacher for the anchor."""
    f_idx = torch.randint(len(forget_images), (n_forget,), generator=rng)
    r_idx = torch.randint(len(retain_images), (n_retain,), generator=rng)
    x0 = torch.cat([forget_images[f_idx], retain_images[r_idx]])
    student_labels = torch.cat([torch.full((n_forget,), concept_label), retain_labels[r_idx]])
    teacher_labels = torch.cat([torch.full((n_forget,), anchor_label), retain_labels[r_idx]])
    noise = torch.randn(x0.shape, generator=rng)
    t = torch.randint(0, generator.scheduler.config.num_train_timesteps, (len(x0),), generator=rng)
    return generator.scheduler.add_noise(x0, noise, t), t, student_labels, teacher_labels


def train_adapter(generator: Generator, teacher: AdapterStack, forget_images: torch.Tensor,
                  retain_images: torch.Tensor, retain_labels: torch.Tensor, concept: str, anchor: str,
                  params: dict, label: str = "", progress=None) -> TrainResult:
    """`params` holds the `adapter` and `train` sections of params.yaml."""
    train = params["train"]
    torch.manual_seed(train["seed"])
    rng = torch.Generator().manual_seed(train["seed"])
    generator.requires_grad_(False)
    student, new = new_student(generator, teacher, params["adapter"], label)
    trainable = [p for i in new for p in student.adapters[i].parameters()]
    optimiser = torch.optim.Adam(trainable, lr=train["lr"])
    weights = train["weights"]
    n_forget = max(1, round(train["batch_size"] * train["forget_fraction"]))
    n_retain = train["batch_size"] - n_forget
    concept_label, anchor_label = generator.labels([concept, anchor])
    grids = {i: student.adapters[i].grid(student.slots[i].intensity) for i in new}
    history, start = [], time.time()
    for step in range(1, train["steps"] + 1):
        xt, t, student_labels, teacher_labels = noised_batch(generator, forget_images, retain_images, retain_labels,
                                                             concept_label, anchor_label, n_forget, n_retain, rng)
        with torch.no_grad():
            teacher_eps, _ = generator.predict_noise(xt, t, teacher_labels, teacher)
        student_eps, paths = generator.predict_noise(xt, t, student_labels, student, record=tuple(new))
        losses = {
            "forget": noise_matching(student_eps[:n_forget], teacher_eps[:n_forget]),
            "retain": noise_matching(student_eps[n_forget:], teacher_eps[n_forget:]),
            "smooth": sum(trajectory_smoothness(paths[i], grids[i]) for i in new),
            "start": sum(trajectory_start(paths[i], torch.arange(n_forget, len(xt))) for i in new),
        }
        loss = sum(weights[k] * v for k, v in losses.items())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 25 == 0 or step == train["steps"]:
            history.append({"step": step, **{k: round(float(v.detach()), 5) for k, v in losses.items()}})
            if progress:
                progress(step, train["steps"], history[-1])
    student.freeze()
    params_count = sum(p.numel() for i in new for p in student.adapters[i].parameters())
    return TrainResult(student, new, params_count, round(time.time() - start, 1), history)


train_adapter_task = task(train_adapter, name="train-ode-adapter", cache_policy=NO_CACHE)
