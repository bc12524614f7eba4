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

import json
import os
import shutil
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open
from safetensors.torch import save_file

import lethe.models
from lethe.models.exported_unet import MODULE, adapted_unet
from lethe.models.generator import META_NAME
from lethe.tasks.settings import GateSettings
from lethe.tasks.stores.integrity import MANIFEST_TAG, file_sha256
from lethe.tasks.stores.registry import Registry

FORMATS = ("diffusers",)
PLANNED = ("lora", "merged")  # issue 17: distilled, runtime-free exports (not built yet)
MANIFEST_NAME = "lethe_export.json"
CARD_NAME = "README.md"
MANIFEST_FORMAT = 1
CLASS_PIPELINE = "class_pipeline"  # models/class_pipeline.py, copied to a class-conditional export's top level
PIPELINES = {"text-to-image": "StableDiffusionPipeline", "class-conditional": [CLASS_PIPELINE, "LetheClassPipeline"]}
UNETS = {"text-to-image": "LetheUNet2DConditionModel", "class-conditional": "LetheUNet2DModel"}
CHECK_PROMPTS_PER_CONCEPT = 4


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


def stamp_metadata(folder: Path, metadata: dict[str, str]) -> None:
    """Add string metadata (ModelSpec-style keys) to every safetensors file of the UNet, tensors unchanged."""
    for path in sorted((folder / "unet").glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            kept = f.metadata() or {}
        save_file(tensors, path, metadata={**kept, **metadata})


def card_text(facts: dict) -> str:
    """The model card: what was forgotten, on what base, with which gates, and how to load and verify it."""
    kind = facts["generator_kind"]
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
    return f"""
# Lethe version {facts["version"]} of `{facts["model_name"]}`

A {kind} diffusion generator from which Lethe removed: **{forgotten}** (deletion requests
{", ".join(map(str, facts["requests"])) or "none"}). Each request added a small Neural-ODE adapter to a frozen
base; this folder carries the base's weights and every adapter, and the UNet's own code applies them.

## Load it

Needs diffusers, transformers, torch and torchdiffeq; not Lethe. `trust_remote_code=True` runs `unet/{MODULE}.py`
and `unet/ode_adapter.py` (read them first; they import torch, diffusers, torchdiffeq and each other only).

{usage}

> **Warning.** Loading `unet/` with plain `UNet2DConditionModel.from_pretrained` (or `UNet2DModel`), or any loader
> that ignores the custom code, silently drops the adapters and serves the **un-forgotten base**. The manifest's
> `check` lists prompts that reveal it: `lethe verify-export PATH` samples them and fails when a forgotten
> concept comes back.

## Provenance

- Base: version {facts["base"]["version"]}, weights sha256 `{facts["base"]["weights_sha256"]}`
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


def export_version(
    registry: Registry,
    version: str | None,
    fmt: str,
    out: str | Path,
    gates: GateSettings,
) -> Path:
    """Write version `version` (a number, or "production") to `out` in format `fmt`; returns `out`."""
    if fmt in PLANNED:
        raise ValueError(f"--format {fmt}: not built yet (issue 17); use --format diffusers, which is exact")
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder: choose a new path")
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
    model = registry.pyfunc(version).unwrap_python_model()  # its weights checked against the registry first
    generator, adapters, sampling = model.generator, model.adapters, dict(model.sampling)
    chain = lineage_chain(registry, registered)
    forgotten = [c for c in registered.tags.get("forgotten", "").split(",") if c]
    steps = [_step(v) for v in chain]
    facts = {
        "format": MANIFEST_FORMAT,
        "export_format": fmt,
        "lethe_version": package_version("lethe-unlearning"),
        "model_name": registry.model_name,
        "version": str(registered.version),
        "weights_sha256": registered.tags.get(MANIFEST_TAG),
        "generator_kind": generator.kind,
        "concepts": list(generator.concepts),
        "base": {"version": str(chain[-1].version), "weights_sha256": chain[-1].tags.get(MANIFEST_TAG)},
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
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write_pipeline(generator, adapters, partial)
        stamp_metadata(
            partial,
            {
                "modelspec.sai_model_spec": "1.0.0",
                "modelspec.implementation": "diffusers",
                "modelspec.architecture": f"lethe/{generator.kind}+ode-adapters",
                "modelspec.title": f"{registry.model_name} v{registered.version}",
                "modelspec.date": facts["exported_at"],
                "lethe.version": str(registered.version),
                "lethe.requests": ",".join(map(str, facts["requests"])),
                "lethe.forgotten": ",".join(forgotten),
                "lethe.base_weights_sha256": str(facts["base"]["weights_sha256"]),
                "lethe.weights_sha256": str(facts["weights_sha256"]),
            },
        )
        data = ModelCardData(library_name="diffusers", tags=["lethe", "unlearning", generator.kind])
        ModelCard(f"---\n{data.to_yaml()}\n---\n{card_text(facts)}").save(partial / CARD_NAME)
        files = {str(p.relative_to(partial)): file_sha256(p) for p in sorted(partial.rglob("*")) if p.is_file()}
        (partial / MANIFEST_NAME).write_text(json.dumps({**facts, "files": files}, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out
