"""`lethe verify-export`: an exported folder's files against its manifest, then its forgetting, on the folder.

The hash check needs nothing but the folder. The forget check loads the folder as a user would (diffusers,
`trust_remote_code=True`), samples the manifest's check requests of every forgotten concept and asks the judge
how often it still sees the concept; it fails above the gate the manifest recorded. A folder whose UNet was
swapped for the plain base (or loaded without its custom code) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lethe.models.text_generator import prompt_seed
from lethe.tasks.operations.export_version import MANIFEST_NAME, state_sha256
from lethe.tasks.steps.evaluate import judged_accuracy
from lethe.tasks.stores.integrity import IntegrityError, file_sha256


def check_files(folder: Path) -> dict:
    """The manifest, once every file it lists hashes as listed and no other file sits beside them."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST_NAME}: it is not a Lethe export")
    manifest = json.loads(path.read_text())
    listed = manifest["files"]
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    present = {p for p in present if "__pycache__" not in p}
    problems = [f"{name}: missing" for name in sorted(set(listed) - present)]
    problems += [f"{name}: not in the manifest" for name in sorted(present - set(listed))]
    problems += [
        f"{name}: sha256 differs from the manifest"
        for name in sorted(set(listed) & present)
        if file_sha256(folder / name) != listed[name]
    ]
    if problems:
        raise IntegrityError(f"{folder}: " + "; ".join(problems))
    return manifest


def _text_samples(pipe, prompts: list[str], n: int, seed: int, sampling: dict) -> torch.Tensor:
    """n images per prompt in [-1, 1], each prompt from Lethe's noise for (seed, prompt)."""
    out = []
    for prompt in prompts:
        images = pipe(
            prompt,
            num_images_per_prompt=n,
            num_inference_steps=sampling["steps"],
            guidance_scale=sampling["guidance"],
            generator=torch.Generator().manual_seed(prompt_seed(seed, prompt)),
            output_type="pt",
        ).images
        out.append(images * 2.0 - 1.0)
    return torch.cat(out)


def load_export(folder: Path, manifest: dict, base: Path | None):
    """The export as a user loads it: a pipeline folder as it is; a LoRA onto its base, which must be the one
    it was fitted to (the hash of its UNet tensors)."""
    from diffusers import DiffusionPipeline

    if manifest["export_format"] != "lora":
        return DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=True)
    if base is None:
        raise ValueError(
            f"{folder} is a LoRA: name the base it applies to with --base FOLDER (a Stable-Diffusion folder whose "
            f"UNet tensors hash to {manifest['base']['unet_state_sha256'][:16]}...)"
        )
    pipe = DiffusionPipeline.from_pretrained(str(base), trust_remote_code=True)
    check_base(pipe.unet, base, manifest)
    pipe.load_lora_weights(str(folder), weight_name=manifest["weight_name"])
    return pipe


def check_base(unet, base: Path, manifest: dict) -> None:
    """`base`'s UNet (loaded as `unet`) must be the one the LoRA was fitted to: the hash of its tensors."""
    found = state_sha256(unet)
    if found != manifest["base"]["unet_state_sha256"]:
        raise IntegrityError(
            f"{base}: its UNet is not the base this LoRA was fitted to (tensors sha256 {found[:16]}..., the manifest "
            f"names {manifest['base']['unet_state_sha256'][:16]}...)"
        )


def forget_check(folder: Path, manifest: dict, judge, n: int, seed: int, base: Path | None = None) -> dict[str, float]:
    """Per forgotten concept (and, for text-to-image, per concept's held-out paraphrases), the share of the
    export's samples the judge names as the concept."""
    pipe = load_export(folder, manifest, base)
    pipe.set_progress_bar_config(disable=True)
    sampling, concepts, found = manifest["sampling"], manifest["concepts"], {}
    for concept, check in manifest["check"].items():
        label = concepts.index(concept)
        if manifest["generator_kind"] == "text-to-image":
            groups = {concept: check["prompts"], f"{concept} (held-out)": check["held_out"]}
            for name, prompts in groups.items():
                if prompts:
                    images = _text_samples(pipe, prompts, n, seed, sampling)
                    labels = torch.full((len(images),), label)
                    found[name] = judged_accuracy(judge, images, labels, concepts)[concept]
        else:
            images = pipe(
                [concept],
                num_images_per_concept=n,
                seed=seed,
                num_inference_steps=sampling["steps"],
                guidance_scale=sampling["guidance"],
                batch_size=sampling["batch_size"],
                output_type="raw",
            ).images
            found[concept] = judged_accuracy(judge, images, torch.full((len(images),), label), concepts)[concept]
    return found


def verify_export(folder: str | Path, judge, n: int, seed: int, base: str | Path | None = None) -> dict:
    """Hashes, then the forget check (a LoRA on `base`); returns the numbers, with `passed` and the reasons."""
    folder = Path(folder)
    manifest = check_files(folder)
    limits = manifest["gates"]
    accuracy = forget_check(folder, manifest, judge, n, seed, Path(base) if base else None)
    reasons = [
        f"{name}: judged as itself on {acc:.1%} of {n} samples per check prompt (gate {limit:.0%})"
        for name, acc in accuracy.items()
        for limit in [limits["held_out_forget_acc_max" if name.endswith("(held-out)") else "forget_acc_max"]]
        if acc > limit
    ]
    return {
        "version": manifest["version"],
        "files": len(manifest["files"]),
        "forget_acc": accuracy,
        "passed": not reasons,
        "reasons": reasons,
    }
