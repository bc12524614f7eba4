"""A text-to-image generator in the Stable-Diffusion layout: any local diffusers folder with `model_index.json`,
`unet` (UNet2DConditionModel, cross-attention), `vae` (AutoencoderKL), `text_encoder` (CLIPTextModel),
`tokenizer` (CLIPTokenizer) and `scheduler`.

Prompts are encoded with the folder's own tokenizer and text encoder (padded to the tokenizer's length, as
the diffusers pipeline does), the UNet denoises in the VAE's latent space, and the VAE decodes. Sampling is
deterministic DDIM (eta = 0) built from the folder's scheduler config, so ε- and v-prediction follow what
the config says. Classifier-free guidance runs the conditional and the unconditional (empty prompt) branch
in one UNet call, so an adapter stack acts on both branches alike.

Adapters attach by module name, exactly as on the class-conditional generator (`models.adapter_stack`): any
module of the UNet whose output is a tensor, such as `mid_block` or a cross-attention `up_blocks.<i>`.

Bound to prompt sets (`with_concepts`), it speaks the concept interface of the class-conditional generator
(`concepts`, `labels`, `sample_concepts`), a concept being sampled through its prompts (or, with
`held_out`, through its held-out paraphrases), so replay, evaluation and fingerprints need no branch per
kind. A saved folder carries its prompt sets in `lethe_concepts.json`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from lethe.models.adapter_stack import AdapterStack, output_channels, run_adapted
from lethe.models.distill_targets import ReplayRows

KIND = "text-to-image"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
CONCEPTS_NAME = "lethe_concepts.json"  # the bound prompt sets, saved beside the components


@dataclass(frozen=True)
class PromptSet:
    """A concept as prompts: `prompts` are what unlearning trains on, `held_out` only evaluates it."""

    name: str
    prompts: tuple[str, ...]
    held_out: tuple[str, ...] = ()


def is_text_to_image_folder(folder: str | Path) -> bool:
    """True when `folder` is a diffusers folder with every component of the Stable-Diffusion layout."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    entries = json.loads(index.read_text())
    return all(c in entries for c in COMPONENTS)


def prompt_seed(seed: int, prompt: str) -> int:
    """The noise stream of (seed, prompt): stable across processes (not Python's salted `hash`)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class TextToImageGenerator(nn.Module):
    """Tokenizer + text encoder + conditional UNet + VAE + DDIM scheduler, all frozen."""

    kind = KIND
    request_column = "prompt"  # what a served request gives

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
        prompt_sets=(),
    ):
        super().__init__()
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
            raise ValueError(
                f"the UNet attends to {unet.config.cross_attention_dim}-d text features but the text "
                f"encoder makes {text_encoder.config.hidden_size}-d ones"
            )
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} channels, the VAE's latents have "
                f"{vae.config.latent_channels}"
            )
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.prompt_sets: dict[str, PromptSet] = {}
        self.with_concepts(prompt_sets)

    # -- concepts as prompt sets -----------------------------------------------------------------------------
    def with_concepts(self, prompt_sets) -> "TextToImageGenerator":
        """Bind concepts: anything with `name`, `prompts` and `held_out` (a validated concept file's entries)."""
        sets = [PromptSet(c.name, tuple(c.prompts), tuple(c.held_out)) for c in prompt_sets]
        if any(not c.prompts for c in sets):
            raise ValueError("every concept needs at least one prompt")
        self.prompt_sets = {c.name: c for c in sets}
        return self

    @property
    def concepts(self) -> list[str]:
        return list(self.prompt_sets)

    @property
    def paraphrased(self) -> list[str]:
        """Concepts with held-out paraphrases (the leakage test)."""
        return [c.name for c in self.prompt_sets.values() if c.held_out]

    def labels(self, concepts: list[str]) -> list[int]:
        unknown = [c for c in concepts if c not in self.prompt_sets]
        if unknown:
            known = ", ".join(self.concepts) or "none (no concept file is bound)"
            raise ValueError(f"unknown concepts {unknown}; this generator knows: {known}")
        return [self.concepts.index(c) for c in concepts]

    def prompts_of(self, concept: str, held_out: bool = False) -> list[str]:
        self.labels([concept])
        found = self.prompt_sets[concept]
        prompts = list(found.held_out if held_out else found.prompts)
        if not prompts:
            raise ValueError(f"concept {concept!r} has no held-out paraphrases")
        return prompts

    def sample_concepts(
        self,
        concepts: list[str],
        n: int,
        seed: int,
        steps: int,
        adapters: AdapterStack | None = None,
        guidance: float = 1.0,
        batch_size: int = 64,
        progress=None,
        held_out: bool = False,
    ):
        """n images per concept, concept-major, with labels (indices into `concepts` of this generator). A
        concept's n samples are spread over its prompts (or held-out paraphrases) in order, the first
        `n % len(prompts)` prompts taking one more; a prompt's noise depends only on (seed, prompt)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        label_list = self.labels(concepts)
        plan = []  # (concept position, prompt, count)
        for position, concept in enumerate(concepts):
            prompts = self.prompts_of(concept, held_out)
            plan += [(position, p, n // len(prompts) + (i < n % len(prompts))) for i, p in enumerate(prompts)]
        plan = [row for row in plan if row[2] > 0]
        images: dict[tuple[int, str], torch.Tensor] = {}
        done, total = 0, len(concepts) * n
        for count in sorted({c for _, _, c in plan}):
            prompts = list(dict.fromkeys(p for _, p, c in plan if c == count))
            out = self.sample(prompts, count, seed, steps, guidance, adapters, batch_size)
            for i, p in enumerate(prompts):
                images[(count, p)] = out[i * count : (i + 1) * count]
            done += len(out)
            if progress:
                progress(min(done, total), total)
        ordered = torch.cat([images[(c, p)] for _, p, c in plan])
        labels = torch.tensor(label_list).repeat_interleave(n)
        return ordered, labels

    def sample_requests(self, requests: list[str], n: int, seed: int, steps: int, adapters, guidance, batch_size):
        """n images per served request (a prompt, any text), as the pyfunc model answers it."""
        return self.sample(list(requests), n, seed, steps, guidance, adapters, batch_size)

    # -- the Stable-Diffusion pipeline -----------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def example_request(self) -> str:
        """A request this generator answers: a bound concept's first prompt, else the empty prompt."""
        return next(iter(self.prompt_sets.values())).prompts[0] if self.prompt_sets else ""

    @property
    def vae_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text features (N, tokens, dim) of `prompts`; "" is the unconditional prompt of guidance."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def feature_channels(self, target: str) -> int:
        """Channels of UNet module `target`'s output, found by one dry forward pass."""
        x = torch.zeros(1, *self.latent_shape, device=self.unet.device)
        zero = torch.zeros(1, dtype=torch.long, device=x.device)
        return output_channels(self.unet, target, lambda: self.unet(x, zero, self.encode_prompts([""])))

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        adapters: AdapterStack | None = None,
        record: tuple[str, ...] = (),
    ):
        """The UNet's prediction (ε or v, as the scheduler config says) and the recorded adapter trajectories."""
        return run_adapted(
            adapters, self.unet, lambda: self.unet(latents, t, encoder_hidden_states=text).sample, record
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents."""
        return self.vae.decode(latents / self.vae_scale).sample.clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        n: int,
        seed: int,
        steps: int,
        guidance: float,
        adapters: AdapterStack | None = None,
        batch_size: int = 64,
        latents: bool = False,
    ) -> torch.Tensor:
        """n images per prompt, prompt-major, (len(prompts) * n, C, H, W) in [-1, 1] (with `latents`, the
        final latents instead, undecoded). The starting noise of a prompt depends only on (seed, prompt), so a
        prompt's samples do not depend on the others in the call."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if guidance < 1.0:
            raise ValueError(f"guidance must be >= 1 (1 = no classifier-free guidance), got {guidance}")
        device = self.unet.device
        rows = [p for p in prompts for _ in range(n)]
        noise = torch.cat(
            [
                torch.randn((n, *self.latent_shape), generator=torch.Generator().manual_seed(prompt_seed(seed, p)))
                for p in prompts
            ]
        )
        empty = self.encode_prompts([""])
        out = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            text = self.encode_prompts(chunk)
            if guidance != 1.0:
                text = torch.cat([empty.expand(len(chunk), -1, -1), text])
            x_t = noise[start : start + batch_size].to(device) * self.scheduler.init_noise_sigma
            self.scheduler.set_timesteps(steps)
            for t in self.scheduler.timesteps:
                x = torch.cat([x_t, x_t]) if guidance != 1.0 else x_t
                x = self.scheduler.scale_model_input(x, t)
                t_batch = torch.full((len(x),), int(t), device=device, dtype=torch.long)
                pred, _ = self.predict_noise(x, t_batch, text, adapters)
                if guidance != 1.0:
                    uncond, cond = pred.chunk(2)
                    pred = uncond + guidance * (cond - uncond)
                x_t = self.scheduler.step(pred, t, x_t).prev_sample
            out.append((x_t if latents else self.decode(x_t)).cpu())
        return torch.cat(out)

    def replay_rows(
        self,
        forget_x0: torch.Tensor,
        forget_prompts: list[str],
        anchor_prompts: list[str],
        retain_x0: torch.Tensor,
        retain_prompts: list[str],
    ) -> ReplayRows:
        """Latent replay with text conditioning: forget row i is asked for `forget_prompts[i]` by the student
        and for an anchor prompt (cycled) by the teacher; retained rows keep their own prompt for both."""
        if len(forget_prompts) != len(forget_x0) or len(retain_prompts) != len(retain_x0) or not anchor_prompts:
            raise ValueError("every replay latent needs its prompt, and at least one anchor prompt is needed")
        teacher = [anchor_prompts[i % len(anchor_prompts)] for i in range(len(forget_prompts))]
        return ReplayRows(
            forget_x0,
            self.encode_prompts(forget_prompts),
            self.encode_prompts(teacher),
            retain_x0,
            self.encode_prompts(retain_prompts),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TextToImageGenerator":
        folder = Path(folder)
        if not is_text_to_image_folder(folder):
            raise FileNotFoundError(
                f"{folder} is not a Stable-Diffusion-layout folder: it needs model_index.json "
                f"naming {', '.join(COMPONENTS)}"
            )
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        generator = cls(unet, vae, text_encoder, tokenizer, scheduler, saved_prompt_sets(folder))
        return generator.eval().requires_grad_(False)

    def save(self, folder: str | Path) -> Path:
        """The same layout back (diffusers' StableDiffusionPipeline loads it)."""
        folder = Path(folder)
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            getattr(self, name).save_pretrained(folder / name)
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": _diffusers_version(),
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if self.prompt_sets:
            sets = [asdict(c) for c in self.prompt_sets.values()]
            (folder / CONCEPTS_NAME).write_text(json.dumps({"concepts": sets}, indent=2) + "\n")
        return folder


def saved_prompt_sets(folder: Path) -> list[PromptSet]:
    """The prompt sets a saved folder carries (none for a folder Lethe did not write)."""
    meta = folder / CONCEPTS_NAME
    if not meta.is_file():
        return []
    return [
        PromptSet(c["name"], tuple(c["prompts"]), tuple(c["held_out"]))
        for c in json.loads(meta.read_text())["concepts"]
    ]


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
