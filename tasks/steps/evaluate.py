"""Evaluate: how often the judge names each concept in the model's samples, plus KID on retained concepts.

Every concept is sampled with the same seeds at every version, so numbers before and after a step compare
the same starting noise. For a forgotten concept the judged accuracy is its *forget* accuracy (lower is
better); for the others it is retain accuracy. KID compares judge features of the retained concepts' samples
with real test images of those concepts (Inception weights cannot be downloaded here); where no real image
of a retained concept exists (a user's own concepts), KID is left out (NaN) and its gate does not apply.

A generator with held-out paraphrases (a text-to-image concept file) is also sampled through them: their
judged accuracy is the leakage test, scored apart (`held_out_accuracy`) and gated like forget accuracy.
Concepts are matched to the judge and to the real images by name, so a generator's concept order is free.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import load_file, save_file
from torchmetrics.image.kid import KernelInceptionDistance

from lethe.models.adapter_stack import AdapterStack
from lethe.models.concepts import CONCEPTS
from lethe.models.judge import Judge, JudgeFeatures
from lethe.tasks.runtime import pick_device
from lethe.tasks.settings import EvalSettings, SamplingSettings


def eval_key(evaluation: EvalSettings, sampling: SamplingSettings) -> str:
    """Evaluations are comparable only under the same sampling and eval settings; this names them. (KID's
    subset count joined the settings later: at its first value it is left out, so earlier keys still match.)"""
    ev = evaluation.model_dump(exclude={"device"} | ({"kid_subsets"} if evaluation.kid_subsets == 50 else set()))
    relevant = {"eval": ev, "sampling": sampling.model_dump()}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def kid_score(judge: Judge, real: torch.Tensor, fake: torch.Tensor, subset: int, subsets: int, device) -> float:
    size = min(subset, len(real), len(fake))
    with warnings.catch_warnings():  # torchmetrics warns that KID "will save all extracted features"
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=JudgeFeatures(judge), subset_size=size, subsets=subsets).to(device)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # KID draws random subsets: fix them so equal inputs give equal scores
    metric.update(real.to(device), real=True)
    metric.update(fake.to(device), real=False)
    mean, _ = metric.compute()
    torch.random.set_rng_state(generator_state)
    return float(mean)


def generate_samples(
    generator,
    adapters: AdapterStack | None,
    evaluation: EvalSettings,
    sampling: SamplingSettings,
    progress=None,
    held_out: bool = False,
):
    """The expensive half: every concept sampled with the eval seed (on CUDA when available); with
    `held_out`, every paraphrased concept through its held-out paraphrases instead."""
    ev, sp = evaluation, sampling
    device = pick_device(ev.device)
    modules = [m for m in (generator, adapters) if m is not None]
    concepts = generator.paraphrased if held_out else generator.concepts
    for m in modules:
        m.to(device)
    try:
        return generator.sample_concepts(
            concepts,
            ev.samples_per_concept,
            ev.seed,
            sp.steps,
            adapters,
            sp.guidance,
            sp.batch_size,
            progress,
            held_out=held_out,
        )
    finally:
        for m in modules:
            m.to("cpu")


def judged_accuracy(judge, images: torch.Tensor, labels: torch.Tensor, concepts: list[str]) -> dict[str, float]:
    """Per concept (labels index `concepts`), the share of its samples the judge names as that concept."""
    predicted = judge.classify(images)
    return {
        c: float((predicted[labels == i] == judge.concepts.index(c)).float().mean())
        for i, c in enumerate(concepts)
        if (labels == i).any()
    }


def score(
    images: torch.Tensor,
    labels: torch.Tensor,
    concepts: list[str],
    judge: Judge,
    forgotten: list[str],
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    evaluation: EvalSettings,
    sampling: SamplingSettings,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """The cheap half: judged accuracy per concept (labels index `concepts`), forget/retain summaries and
    KID for a forgotten list; with `held_out` samples (labelled alike), their accuracy and forget maximum."""
    device = pick_device(evaluation.device)
    judge.to(device)
    try:
        accuracy = judged_accuracy(judge, images, labels, concepts)
        retained = [c for c in accuracy if c not in forgotten]
        real_ids = torch.tensor([CONCEPTS.index(c) for c in retained if c in CONCEPTS])
        fake_ids = torch.tensor([concepts.index(c) for c in retained if c in CONCEPTS])
        kid = float("nan")
        if len(real_ids):
            kid = kid_score(
                judge,
                real_images[torch.isin(real_labels, real_ids)],
                images[torch.isin(labels, fake_ids)],
                evaluation.kid_subset,
                evaluation.kid_subsets,
                device,
            )
        held = judged_accuracy(judge, *held_out, concepts) if held_out is not None else {}
    finally:
        judge.to("cpu")
    forget_accs = [accuracy[c] for c in forgotten]
    held_forget = [held[c] for c in forgotten if c in held]
    out = {
        "accuracy": accuracy,
        "forgotten": list(forgotten),
        "forget_acc_max": max(forget_accs) if forget_accs else 0.0,
        "forget_acc_mean": sum(forget_accs) / len(forget_accs) if forget_accs else 0.0,
        "retain_acc_mean": sum(accuracy[c] for c in retained) / len(retained),
        "kid": kid,
        "samples_per_concept": evaluation.samples_per_concept,
        "eval_key": eval_key(evaluation, sampling),
    }
    if held:
        out["held_out_accuracy"] = held
        out["held_out_forget_acc_max"] = max(held_forget) if held_forget else 0.0
    return out


HELD_OUT = "-held-out"  # the cache key suffix of held-out paraphrase samples


class EvalCache:
    """Evaluation samples of registered versions, so a parent is not re-sampled for every child."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, version: str, key: str) -> Path:  # held-out samples: key + "-held-out"
        return self.folder / f"v{version}-{key}.safetensors"

    def get(self, version: str, key: str):
        path = self._path(version, key)
        if not path.is_file():
            return None
        tensors = load_file(path)
        return tensors["images"], tensors["labels"]

    def put(self, version: str, key: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self._path(version, key).with_suffix(".tmp")
        save_file({"images": images.contiguous(), "labels": labels.contiguous()}, tmp)
        tmp.replace(self._path(version, key))


generate_samples_task = task(generate_samples, name="sample-for-eval", cache_policy=NO_CACHE)
score_task = task(score, name="score", cache_policy=NO_CACHE)
