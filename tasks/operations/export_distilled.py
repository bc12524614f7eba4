"""`lethe export --format lora|merged`: a text-to-image version's forgetting with no code of Lethe's at run time.

The version's adapter stack is distilled into a LoRA on the UNet's own Linear and Conv2d layers
(`models.lora_distill`). `lora` writes it as diffusers writes LoRAs (`pytorch_lora_weights.safetensors`, PEFT
keys; `--kohya`: `lora_kohya.safetensors` in kohya's layout); `merged` loads it onto the base through
diffusers, fuses it and writes a plain Stable-Diffusion folder. Either is an approximation, so the artefact is
loaded back from the files as written, the way a user would load it, and run through the pipeline's own
evaluation against the version itself: forget accuracy on the requests' prompts and on held-out paraphrases,
retained accuracy, KID and the recovery audit. It is written only when it passes the version gates; otherwise
the numbers are printed and nothing is left behind.

With `export.attack_rounds`, the fit is attacked as it goes: after each phase, the recovery attack (the audit's
budget, `recovery`) runs against the student on every forgotten concept, and what it finds becomes rows whose
targets are the version's own outputs there. The attacker's images are the base's samples of the concept's
prompts, never the real images the audit attacks with.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from lethe.models.adapter_stack import AdapterStack
from lethe.models.lora_distill import (
    ADAPTER_NAME,
    DistilRows,
    distil_lora,
    kohya_state_dict,
    lora_modules,
    teacher_rows,
)
from lethe.models.recovery_attack import recover_token_embedding, token_embedding_features
from lethe.models.sampler import noised
from lethe.models.text_generator import TextToImageGenerator
from lethe.tasks.operations.anchor_confusions import lineage_confusions
from lethe.tasks.operations.export_version import (
    check_new_folder,
    resolve_version,
    version_facts,
    write_export,
)
from lethe.tasks.settings import EvalSettings, ExportSettings, GateSettings, RecoverySettings, SamplingSettings
from lethe.tasks.steps.consolidate import replay_rows
from lethe.tasks.steps.evaluate import HELD_OUT, EvalCache, eval_key, generate_samples, score
from lethe.tasks.steps.gates import check_gates
from lethe.tasks.steps.recovery_audit import attacker_latents, audit_recovery
from lethe.tasks.stores.registry import Registry

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights writes and loads
KOHYA_FILE = "lora_kohya.safetensors"
DECODER = ["mid_block", "up_blocks"]


class ExportRefused(RuntimeError):
    """The distilled artefact failed the gates; `result` holds the numbers."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def attack_rounds(
    generator,
    adapters: AdapterStack,
    forgotten: list[str],
    export: ExportSettings,
    recovery: RecoverySettings,
    sampling: SamplingSettings,
):
    """What the fit calls after each phase: the recovery attack against the student on every forgotten concept,
    returning `export.attack_rows` rows per concept conditioned on the vector found, with the version's targets."""
    latents = {c: attacker_latents(generator, c, None, recovery, sampling) for c in forgotten}

    def attacked(student, round_: int) -> DistilRows:
        # The same generator around the student; built here, not as a method of the generator, because the
        # text-to-image training stage depends on models/text_generator.py and a change there retrains the base.
        attacked_model = TextToImageGenerator(
            student,
            generator.vae,
            generator.text_encoder,
            generator.tokenizer,
            generator.scheduler,
            generator.prompt_sets.values(),
        )
        parts = []
        for i, (concept, x0) in enumerate(latents.items()):
            seed = export.seed + 1000 * (round_ + 1) + i
            vector, _ = recover_token_embedding(
                attacked_model, None, x0, recovery.steps, recovery.lr, recovery.batch_size, seed
            )
            rng = torch.Generator().manual_seed(seed)
            xt, t = noised(generator, x0[torch.randint(len(x0), (export.attack_rows,), generator=rng)], rng)
            text = token_embedding_features(generator, vector).expand(export.attack_rows, -1, -1).contiguous()
            parts.append(teacher_rows(generator.unet, adapters, xt, t, text, 256))
        return DistilRows.cat(parts)

    return attacked


def fit(
    generator,
    adapters: AdapterStack,
    forgotten: list[str],
    export: ExportSettings,
    sampling: SamplingSettings,
    recovery: RecoverySettings,
    progress=None,
):
    """The LoRA, fitted to the adapted UNet on noised rows of the version's own samples (and, with
    `export.attack_rounds`, on rows of what the recovery attack finds against it)."""
    x0, text, _ = replay_rows(generator, adapters, export.replay_per_concept, export.seed, sampling)
    rng = torch.Generator().manual_seed(export.seed)
    idx = torch.randint(len(x0), (export.rows,), generator=rng)
    x0, text = x0[idx], text[idx].clone()
    empty = torch.rand(export.rows, generator=rng) < export.uncond_share
    text[empty] = generator.encode_prompts([""])[0]
    xt, t = noised(generator, x0, rng)
    rows = teacher_rows(generator.unet, adapters, xt, t, text, 256)
    active = [n for n, s in adapters.slots.items() if s.enabled and s.intensity > 0]
    sites = list(dict.fromkeys(t for n in active for t in adapters.slots[n].targets))
    modules = lora_modules(generator.unet, sites if export.lora_scope == "sites" else DECODER)
    rounds = export.attack_rounds if forgotten else 0
    return distil_lora(
        generator.unet,
        rows,
        modules,
        export.lora_rank,
        export.steps,
        export.batch_size,
        export.lr,
        export.seed,
        progress,
        rounds,
        attack_rounds(generator, adapters, forgotten, export, recovery, sampling) if rounds else None,
        export.attack_share,
    )


def base_pipeline(generator) -> StableDiffusionPipeline:
    """The base as a stock pipeline (its own UNet copied), what a user loads the LoRA onto."""
    return StableDiffusionPipeline(
        vae=generator.vae,
        text_encoder=generator.text_encoder,
        tokenizer=generator.tokenizer,
        unet=copy.deepcopy(generator.unet),
        scheduler=generator.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def as_generator(pipe, generator) -> TextToImageGenerator:
    """A loaded pipeline as a Lethe generator with the version's prompt sets, for the pipeline's evaluation."""
    loaded = TextToImageGenerator(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)
    return loaded.with_concepts(generator.prompt_sets.values()).eval().requires_grad_(False)


def evaluate(
    generator, adapters, forgotten, judge, real, attacker, ev, sampling, recovery, audit: bool, cached=None
) -> dict:
    """The pipeline's evaluation; `cached`: the version's own samples, {"main", "held_out"}, when the
    workspace's evaluation cache holds them (the same eval and sampling settings)."""
    cached = cached or {}
    samples = cached.get("main") or generate_samples(generator, adapters, ev, sampling)
    held = None
    if generator.paraphrased:
        held = cached.get("held_out") or generate_samples(generator, adapters, ev, sampling, held_out=True)
    scored = score(*samples, generator.concepts, judge, forgotten, *real, ev, sampling, held_out=held)
    if audit:
        scored["recovery"] = audit_recovery(generator, adapters, judge, forgotten, attacker, recovery, sampling)
    return scored


def summary(after: dict, before: dict, lora_bytes: int, unet_bytes: int, unexplained: float) -> dict:
    return {
        "forget accuracy, requests' prompts (max)": round(after["forget_acc_max"], 4),
        "forget accuracy, held-out paraphrases (max)": round(after.get("held_out_forget_acc_max", 0.0), 4),
        "retained accuracy (mean)": f"{after['retain_acc_mean']:.4f} (version: {before['retain_acc_mean']:.4f}, "
        f"ratio {after['retain_acc_mean'] / max(before['retain_acc_mean'], 1e-9):.4f})",
        "KID on retained concepts": f"{after['kid']:.4f} (version: {before['kid']:.4f})",
        "recovery attack (max)": round(max(after.get("recovery", {}).values(), default=0.0), 4),
        "LoRA size / UNet size": f"{lora_bytes} / {unet_bytes} bytes ({lora_bytes / unet_bytes:.2%})",
        "share of the stack's change left unexplained": unexplained,
    }


def export_distilled(
    registry: Registry,
    version: str | None,
    fmt: str,
    out: str | Path,
    kohya: bool,
    judge,
    real: tuple,
    attacker: tuple,
    export: ExportSettings,
    evaluation: EvalSettings,
    recovery: RecoverySettings,
    gates: GateSettings,
    cache: EvalCache | None = None,
    log=print,
) -> dict:
    """Fit, write aside, load back, evaluate, gate; returns the numbers (raises ExportRefused when it fails)."""
    if fmt not in ("lora", "merged"):
        raise ValueError(f"--format {fmt!r} is not a distilled export (lora, merged)")
    if kohya and fmt != "lora":
        raise ValueError("--kohya writes a LoRA's keys in kohya's layout: it goes with --format lora")
    out = check_new_folder(out)
    registered = resolve_version(registry, version)
    model = registry.pyfunc(registered.version).unwrap_python_model()
    generator, adapters = model.generator, model.adapters
    if generator.kind != "text-to-image":
        raise ValueError(
            f"version {registered.version} is {generator.kind}: --format {fmt} distils into a LoRA for a "
            "Stable-Diffusion pipeline; export it with --format diffusers (exact)"
        )
    if not len(adapters):
        raise ValueError(f"version {registered.version} has no adapters: there is nothing to distil")
    sampling = SamplingSettings(**model.sampling)
    facts = version_facts(registry, registered, generator, adapters, model.sampling, gates, fmt)
    forgotten = facts["forgotten"]
    started = time.time()
    log(
        f"distilling version {registered.version}'s {len(adapters)} adapter(s) into a rank-{export.lora_rank} "
        f"{export.lora_dtype} LoRA"
    )
    if export.attack_rounds and forgotten:
        log(f"with {export.attack_rounds} round(s) of the recovery attack against the fit")
    distilled = fit(generator, adapters, forgotten, export, sampling, recovery)
    dtype = getattr(torch, export.lora_dtype)
    state = {k: v.to(dtype) for k, v in get_peft_model_state_dict(distilled.unet, adapter_name=ADAPTER_NAME).items()}
    unet_bytes = sum(t.numel() * t.element_size() for t in generator.unet.state_dict().values())
    weight_name = KOHYA_FILE if kohya else LORA_FILE
    result: dict = {}

    def build(folder: Path) -> list[Path]:
        lora_dir = folder if fmt == "lora" else folder / ".lora"
        lora_dir.mkdir(exist_ok=True)
        if kohya:
            save_file(kohya_state_dict(state, distilled.rank), lora_dir / KOHYA_FILE)
        else:
            StableDiffusionPipeline.save_lora_weights(lora_dir, unet_lora_layers=state, safe_serialization=True)
        lora_bytes = (lora_dir / weight_name).stat().st_size
        pipe = base_pipeline(generator)  # the files as written, loaded as a user loads them
        pipe.load_lora_weights(str(lora_dir), weight_name=weight_name)
        if fmt == "merged":
            pipe.fuse_lora(lora_scale=1.0)
            pipe.unload_lora_weights()
            pipe.save_pretrained(folder)
            for p in lora_dir.iterdir():
                p.unlink()
            lora_dir.rmdir()
            pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
        log("evaluating the artefact and the version alike")
        after = evaluate(
            as_generator(pipe, generator), None, forgotten, judge, real, attacker, evaluation, sampling, recovery, True
        )
        key = eval_key(evaluation, sampling)
        version_samples = {}
        if cache is not None:
            version_samples = {"main": cache.get(str(registered.version), key)}
            version_samples["held_out"] = cache.get(str(registered.version), key + HELD_OUT)
        before = evaluate(
            generator, adapters, forgotten, judge, real, attacker, evaluation, sampling, recovery, False,
            cached=version_samples,
        )  # fmt: skip
        reasons = check_gates(after, before, gates, lineage_confusions(registry, str(registered.version)))
        result.update(
            version=str(registered.version),
            format=fmt,
            passed=not reasons,
            reasons=reasons,
            table=summary(after, before, lora_bytes, unet_bytes, distilled.unexplained),
            accuracy={c: round(a, 4) for c, a in after["accuracy"].items()},
            held_out_accuracy={c: round(a, 4) for c, a in after.get("held_out_accuracy", {}).items()},
            version_accuracy={c: round(a, 4) for c, a in before["accuracy"].items()},
            lora_bytes=lora_bytes,
            unet_bytes=unet_bytes,
            lora_params=distilled.lora_params,
            lora_modules=len(distilled.modules),
            seconds=round(time.time() - started, 1),
        )
        if reasons:
            raise ExportRefused(f"the {fmt} export of version {registered.version} fails the gates", result)
        facts.update(evaluation=result, weight_name=weight_name)
        return [folder / weight_name] if fmt == "lora" else sorted((folder / "unet").glob("*.safetensors"))

    write_export(out, facts, build, f"lethe/{generator.kind}+lora" if fmt == "lora" else "stable-diffusion")
    return result
