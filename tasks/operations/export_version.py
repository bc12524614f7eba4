"""`lethe export`: a registered version as a folder the rest of the ecosystem loads, with its provenance.

`--format diffusers` is exact: a Stable-Diffusion-layout folder (or, for a class-conditional version, a folder
with a small pipeline class of its own) whose UNet is a diffusers custom component carrying the adapter stack
(`models/exported_unet.py`), loaded by `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`
with diffusers, transformers, torch and torchdiffeq and without Lethe, and sampling the bits Lethe samples.

Every export carries a model card (`README.md`, huggingface_hub's ModelCard) and a manifest
(`lethe_export.json`: every file's sha256, the base's hash, the requests, the lineage with its gate results, the
check prompts); the UNet's safetensors carry the same facts as ModelSpec-style metadata. The folder is written
beside OUT under a temporary name and renamed into place last, so an export is whole or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open
from safetensors.torch import save_file

import lethe.models
from lethe.models.exported_unet import MODULE, adapted_unet
from lethe.models.generator import META_NAME
from lethe.tasks.settings import GateSettings
from lethe.tasks.stores.integrity import MANIFEST_TAG, file_sha256
from lethe.tasks.stores.registry import Registry

FORMATS = ("diffusers", "lora", "merged")  # exact; distilled (tasks/operations/export_distilled.py)
MANIFEST_NAME = "lethe_export.json"
CARD_NAME = "README.md"
MANIFEST_FORMAT = 1
CLASS_PIPELINE = "class_pipeline"  # models/class_pipeline.py, copied to a class-conditional export's top level
PIPELINES = {"text-to-image": "StableDiffusionPipeline", "class-conditional": [CLASS_PIPELINE, "LetheClassPipeline"]}
UNETS = {"text-to-image": "LetheUNet2DConditionModel", "class-conditional": "LetheUNet2DModel"}
CHECK_PROMPTS_PER_CONCEPT = 4
# Per format: what the folder is, and how it goes wrong silently.
LOADING = {
    "diffusers": (
        "Each request added a small Neural-ODE adapter to a frozen base; this folder carries the base's weights and "
        f"every adapter, and the UNet's own code applies them. Loading needs diffusers, transformers, torch and "
        f"torchdiffeq, not Lethe: `trust_remote_code=True` runs `unet/{MODULE}.py` and `unet/ode_adapter.py` (read "
        "them first; they import torch, diffusers, torchdiffeq and each other only).",
        "Loading `unet/` with plain `UNet2DConditionModel.from_pretrained` (or `UNet2DModel`), or any loader that "
        "ignores the custom code, silently drops the adapters and serves the **un-forgotten base**.",
    ),
    "lora": (
        "This folder holds a LoRA distilled from the version's adapters, for the base named below; it needs no code "
        "of Lethe's, only diffusers with peft (or a web UI, in kohya's layout).",
        "The LoRA forgets only on the base it was fitted to (its UNet tensors' hash is below) and at scale 1.0; "
        "loaded on another checkpoint, at a lower scale, or not at all, the **un-forgotten base** answers.",
    ),
    "merged": (
        "This folder is a plain Stable-Diffusion pipeline whose UNet weights have a LoRA, distilled from the "
        "version's adapters, fused into them: no custom code at all.",
        "This UNet replaces the base's: any other copy of the base's UNet weights serves the **un-forgotten base**.",
    ),
}


def lineage_chain(registry: Registry, registered) -> list:
    """The version and its ancestors back to the base, newest first."""
    chain, seen = [registered], {str(registered.version)}
    while chain[-1].tags.get("parent_version"):
        parent = registry.version(chain[-1].tags["parent_version"])
        if str(parent.version) in seen:
            raise ValueError(f"version {parent.version}'s lineage loops back on itself")
        chain.append(parent)
        seen.add(str(parent.version))
    return chain


def _step(v) -> dict:
    tags = dict(v.tags)
    metrics = {k[len("metric.") :]: float(x) for k, x in tags.items() if k.startswith("metric.")}
    return {
        "version": str(v.version),
        "kind": tags.get("kind"),
        "request_id": int(tags["request_id"]) if tags.get("request_id") else None,
        "concept": tags.get("concept"),
        "anchor": tags.get("anchor"),
        "folded_requests": [int(r) for r in tags.get("folded_requests", "").split(",") if r],
        "gate": "passed (approved by a person)" if tags.get("approved_by") else tags.get("gate"),
        "gate_reasons": tags.get("gate_reasons", ""),
        "metrics": metrics,
        "weights_sha256": tags.get(MANIFEST_TAG),
    }


def check_requests(generator, forgotten: list[str]) -> dict:
    """What reveals whether the export forgets: per forgotten concept, the prompts (text-to-image: trained
    prompts and held-out paraphrases) or the concept itself (class-conditional)."""
    if generator.kind != "text-to-image":
        return {c: {"concept": c} for c in forgotten}
    out = {}
    for c in forgotten:
        found = generator.prompt_sets[c]
        out[c] = {
            "prompts": list(found.prompts[:CHECK_PROMPTS_PER_CONCEPT]),
            "held_out": list(found.held_out[:CHECK_PROMPTS_PER_CONCEPT]),
        }
    return out


def write_pipeline(generator, adapters, folder: Path) -> Path:
    """The generator's own diffusers layout, its UNet replaced by the adapted custom component."""
    generator.save(folder)
    shutil.rmtree(folder / "unet")
    adapted_unet(generator.unet, adapters.config(), adapters.state_dict()).save_pretrained(folder / "unet")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index.update(
        {
            "_class_name": PIPELINES[generator.kind],
            "_diffusers_version": package_version("diffusers"),
            "unet": [MODULE, UNETS[generator.kind]],
            "scheduler": ["diffusers", type(generator.scheduler).__name__],
        }
    )
    if generator.kind == "class-conditional":
        index["concepts"] = list(generator.concepts)
        shutil.copyfile(Path(lethe.models.__file__).with_name(f"{CLASS_PIPELINE}.py"), folder / f"{CLASS_PIPELINE}.py")
        (folder / META_NAME).unlink()  # a Lethe base folder marker: this folder is not a base to unlearn from
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return folder


def stamp_metadata(paths: list[Path], metadata: dict[str, str]) -> None:
    """Add string metadata (ModelSpec-style keys) to safetensors files, tensors unchanged."""
    for path in paths:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            kept = f.metadata() or {}
        save_file(tensors, path, metadata={**kept, **metadata})


def card_text(facts: dict) -> str:
    """The model card: what was forgotten, on what base, with which gates, and how to load and verify it."""
    kind, fmt = facts["generator_kind"], facts["export_format"]
    steps = "\n".join(
        f"| {s['version']} | {s['kind']} | {s['request_id'] or ''} | {s['concept'] or ''} | {s['anchor'] or ''} | "
        f"{s['gate']} | {s['metrics'].get('forget_acc_max', '')} | {s['metrics'].get('retain_acc_mean', '')} |"
        for s in facts["lineage"]
    )
    if kind == "text-to-image":
        concept = next(iter(facts["check"]), None)
        prompt = facts["check"][concept]["prompts"][0] if concept else "a photo"
        usage = (
            "```python\nimport hashlib, torch\nfrom diffusers import DiffusionPipeline\n\n"
            'pipe = DiffusionPipeline.from_pretrained("PATH", trust_remote_code=True)\n'
            f"prompt, seed = {prompt!r}, 0\n"
            "# Lethe's noise for (seed, prompt): the same images `lethe sample --prompt` gives\n"
            'stream = int.from_bytes(hashlib.sha256(f"{seed}\\x00{prompt}".encode()).digest()[:8], "little") '
            "& (2**63 - 1)\n"
            f"images = pipe(prompt, num_inference_steps={facts['sampling']['steps']}, "
            f"guidance_scale={facts['sampling']['guidance']},\n"
            '              generator=torch.Generator().manual_seed(stream), output_type="pt").images\n```'
        )
    else:
        concept = next(iter(facts["check"]), facts["concepts"][0])
        usage = (
            "```python\nfrom diffusers import DiffusionPipeline\n\n"
            'pipe = DiffusionPipeline.from_pretrained("PATH", trust_remote_code=True)\n'
            f"images = pipe([{concept!r}], num_images_per_concept=16, seed=0, "
            f"num_inference_steps={facts['sampling']['steps']}, guidance_scale={facts['sampling']['guidance']},\n"
            f'              batch_size={facts["sampling"]["batch_size"]}, output_type="pt").images\n```'
        )
    forgotten = ", ".join(facts["forgotten"]) or "nothing"
    load, warning = LOADING[fmt]
    if fmt == "lora":
        usage = (
            "```python\nfrom diffusers import DiffusionPipeline\n\n"
            'pipe = DiffusionPipeline.from_pretrained("BASE")  # the base named under Provenance\n'
            f'pipe.load_lora_weights("PATH", weight_name="{facts["weight_name"]}")  # needs peft\n'
            "```"
        )
    elif fmt == "merged":
        usage = usage.replace(", trust_remote_code=True", "")
    measured = ""
    if facts.get("evaluation"):
        e = facts["evaluation"]
        rows = "\n".join(f"| {k} | {v} |" for k, v in e["table"].items())
        measured = f"""
## Measured on this artefact

An approximation of version {facts["version"]}: measured on the files as written, against the version itself,
with the pipeline's evaluation and gates (all passed, or it would not have been written).

| measure | value |
|---|---|
{rows}
"""
    return f"""
# Lethe version {facts["version"]} of `{facts["model_name"]}` ({fmt})

A {kind} diffusion generator from which Lethe removed: **{forgotten}** (deletion requests
{", ".join(map(str, facts["requests"])) or "none"}). {load}

## Load it

{usage}

> **Warning.** {warning} The manifest's `check` lists prompts that reveal a forgotten concept:
> `lethe verify-export PATH` samples them and fails when one comes back.
{measured}
## Provenance

- Base: version {facts["base"]["version"]}, weights sha256 `{facts["base"]["weights_sha256"]}`, UNet tensors
  sha256 `{facts["base"]["unet_state_sha256"]}`
- This version: {facts["version"]}, weights sha256 `{facts["weights_sha256"]}`, exported {facts["exported_at"]}
  by Lethe {facts["lethe_version"]}
- Gates (forget accuracy at most {facts["gates"]["forget_acc_max"]}, retained accuracy at least
  {facts["gates"]["retain_ratio_min"]} of the parent's):

| version | kind | request | concept | anchor | gate | forget acc. (max) | retain acc. (mean) |
|---|---|---|---|---|---|---|---|
{steps}

## Verify it

`lethe_export.json` lists the sha256 of every file. `lethe verify-export PATH` re-checks them and samples the
forgotten concepts from this folder; without Lethe, `sha256sum` each file against the manifest.
"""


def resolve_version(registry: Registry, version: str | None):
    """The registered version (a number, or "production"), refused when it failed its gates unapproved."""
    if version in (None, "production"):
        production = registry.production()
        if production is None:
            raise KeyError("no production version yet: run `lethe run` (or `lethe demo`) first")
        version = str(production.version)
    registered = registry.version(version)
    if registered.tags.get("gate") == "failed" and not registered.tags.get("approved_by"):
        raise ValueError(
            f"version {version} failed its gates ({registered.tags.get('gate_reasons', '')}); only a version that "
            "passed them, or that a person approved, is exported"
        )
    return registered


def check_new_folder(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder: choose a new path")
    return out


def version_facts(registry: Registry, registered, generator, adapters, sampling: dict, gates: GateSettings, fmt: str):
    """What the card and the manifest say about a version, read from the registry back to the base."""
    chain = lineage_chain(registry, registered)
    forgotten = [c for c in registered.tags.get("forgotten", "").split(",") if c]
    steps = [_step(v) for v in chain]
    return {
        "format": MANIFEST_FORMAT,
        "export_format": fmt,
        "lethe_version": package_version("lethe-unlearning"),
        "model_name": registry.model_name,
        "version": str(registered.version),
        "weights_sha256": registered.tags.get(MANIFEST_TAG),
        "generator_kind": generator.kind,
        "concepts": list(generator.concepts),
        "base": {
            "version": str(chain[-1].version),
            "weights_sha256": chain[-1].tags.get(MANIFEST_TAG),
            "unet_state_sha256": state_sha256(generator.unet),
        },
        "requests": sorted({s["request_id"] for s in steps if s["request_id"] is not None}),
        "forgotten": forgotten,
        "adapters": adapters.names,
        "lineage": steps,
        "gates": gates.model_dump(),
        "sampling": sampling,  # what the version was registered with
        "noise": (
            "per prompt: torch.Generator().manual_seed(int.from_bytes(sha256(f'{seed}\\x00{prompt}')[:8], "
            "'little') & (2**63 - 1))"
            if generator.kind == "text-to-image"
            else "per concept: the pipeline's own `seed` argument (class_pipeline.concept_noise)"
        ),
        "check": check_requests(generator, forgotten),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def state_sha256(module) -> str:
    """A hash of a module's tensors by name, dtype, shape and bytes: the same weights hash alike whatever file
    layout holds them (a LoRA names the base it applies to by this)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def metadata_of(facts: dict, architecture: str) -> dict[str, str]:
    """The facts safetensors metadata carries (string values, ModelSpec-style keys)."""
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.implementation": "diffusers",
        "modelspec.architecture": architecture,
        "modelspec.title": f"{facts['model_name']} v{facts['version']} ({facts['export_format']})",
        "modelspec.date": facts["exported_at"],
        "lethe.version": facts["version"],
        "lethe.requests": ",".join(map(str, facts["requests"])),
        "lethe.forgotten": ",".join(facts["forgotten"]),
        "lethe.base_weights_sha256": str(facts["base"]["weights_sha256"]),
        "lethe.base_unet_state_sha256": facts["base"]["unet_state_sha256"],
        "lethe.weights_sha256": str(facts["weights_sha256"]),
    }


def write_export(out: Path, facts: dict, build, architecture: str) -> Path:
    """`build(folder)` writes the artefact and returns its weight files (or raises); then the metadata, the card
    and the manifest. Written beside `out` under a temporary name and renamed last: whole or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
        stamp_metadata(build(partial), metadata_of(facts, architecture))
        data = ModelCardData(library_name="diffusers", tags=["lethe", "unlearning", facts["generator_kind"]])
        ModelCard(f"---\n{data.to_yaml()}\n---\n{card_text(facts)}").save(partial / CARD_NAME)
        files = {str(p.relative_to(partial)): file_sha256(p) for p in sorted(partial.rglob("*")) if p.is_file()}
        (partial / MANIFEST_NAME).write_text(json.dumps({**facts, "files": files}, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked before
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def export_version(registry: Registry, version: str | None, out: str | Path, gates: GateSettings) -> Path:
    """Write version `version` (a number, or "production") to `out` as an exact diffusers folder; returns `out`."""
    out = check_new_folder(out)
    registered = resolve_version(registry, version)
    model = registry.pyfunc(registered.version).unwrap_python_model()  # weights checked against the registry
    generator, adapters, sampling = model.generator, model.adapters, dict(model.sampling)
    facts = version_facts(registry, registered, generator, adapters, sampling, gates, "diffusers")

    def build(folder: Path) -> list[Path]:
        write_pipeline(generator, adapters, folder)
        return sorted((folder / "unet").glob("*.safetensors"))

    return write_export(out, facts, build, f"lethe/{generator.kind}+ode-adapters")
