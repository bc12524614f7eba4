"""dvc stage `train_text_to_image`: the embedded Stable-Diffusion-layout model, trained from scratch offline.

From the `prepare` stage's 16x16 images and captions made from templates and paraphrases per concept
(`models.captions`), in three parts:
1. a byte-level BPE tokenizer trained on the captions (written as the CLIP tokenizer's files);
2. a 1-channel AutoencoderKL (16x16 -> latent_channels x 8 x 8), reconstruction loss plus a small KL term,
   its scaling factor set to 1 / std of the training latents;
3. a CLIP text encoder and a cross-attention UNet2DConditionModel trained together on the latents, with a
   share of empty captions so classifier-free guidance works.
The folder loads with diffusers' StableDiffusionPipeline; `concepts.yaml` beside it is its concept file
(unlearning prompts and held-out paraphrases).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from lethe.models.captions import captions, prompt_sets
from lethe.models.concepts import TEXT_CONCEPTS
from lethe.models.text_generator import TextToImageGenerator
from lethe.tasks.settings import TextToImageTrainingSettings
from lethe.tasks.stages.entry import stage_settings, write_curve, write_metrics
from lethe.tasks.stores.prepared_splits import BalancedBatches, load_split

SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def train_tokenizer(texts: list[str], vocab_size: int, tokens: int, folder: Path) -> CLIPTokenizer:
    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[1], end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([t.lower() for t in texts], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    bpe.model.save(str(folder))  # vocab.json + merges.txt
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=tokens)


def train_vae(
    images: torch.Tensor, labels: torch.Tensor, recipe: TextToImageTrainingSettings, curve: list[dict]
) -> AutoencoderKL:
    vae = AutoencoderKL(
        in_channels=images.shape[1],
        out_channels=images.shape[1],
        down_block_types=("DownEncoderBlock2D",) * len(recipe.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(recipe.vae_channels),
        block_out_channels=tuple(recipe.vae_channels),
        latent_channels=recipe.latent_channels,
        norm_num_groups=recipe.norm_groups,
        sample_size=images.shape[-1],
    )
    optimiser = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    batches = BalancedBatches(labels, recipe.seed)
    vae.train()
    for step in range(1, recipe.vae_steps + 1):
        x = images[batches.draw(recipe.batch_size)]
        posterior = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, x) + recipe.vae_kl * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % recipe.log_every == 0 or step == recipe.vae_steps:
            curve.append({"part": "vae", "step": step, "loss": round(loss.item(), 5)})
            print(f"train_text_to_image vae step {step}/{recipe.vae_steps} loss {loss.item():.4f}", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = images[:8192]
        latents = torch.cat([vae.encode(sample[i : i + 1024]).latent_dist.mean for i in range(0, len(sample), 1024)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def train_denoiser(
    images, labels, vae: AutoencoderKL, tokenizer: CLIPTokenizer, recipe: TextToImageTrainingSettings, curve: list[dict]
):
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=recipe.text_hidden,
            intermediate_size=4 * recipe.text_hidden,
            num_hidden_layers=recipe.text_layers,
            num_attention_heads=recipe.text_heads,
            max_position_embeddings=recipe.tokens,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    depth = len(recipe.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=images.shape[-1] // 2 ** (len(recipe.vae_channels) - 1),
        in_channels=recipe.latent_channels,
        out_channels=recipe.latent_channels,
        block_out_channels=tuple(recipe.unet_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (depth - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (depth - 1),
        cross_attention_dim=recipe.text_hidden,
        attention_head_dim=recipe.attention_heads,
        norm_num_groups=recipe.norm_groups,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=recipe.train_timesteps,
        beta_schedule=recipe.beta_schedule,
        clip_sample=False,
        prediction_type=recipe.prediction_type,
        steps_offset=1,
    )
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 1024]).latent_dist.mean for i in range(0, len(images), 1024)])
        latents = latents * vae.config.scaling_factor
    texts = {i: captions(c) for i, c in enumerate(TEXT_CONCEPTS)}
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, recipe.steps) / recipe.steps))
    )
    batches = BalancedBatches(labels, recipe.seed)
    rng = torch.Generator().manual_seed(recipe.seed)
    unet.train()
    text_encoder.train()
    running, start = 0.0, time.time()
    for step in range(1, recipe.steps + 1):
        idx = batches.draw(recipe.batch_size)
        choice = torch.randint(10_000, (len(idx),), generator=rng).tolist()
        empty = (torch.rand(len(idx), generator=rng) < recipe.empty_caption_rate).tolist()
        batch_text = ["" if e else texts[int(y)][k % len(texts[int(y)])] for y, k, e in zip(labels[idx], choice, empty)]
        ids = tokenizer(
            batch_text, padding="max_length", max_length=recipe.tokens, truncation=True, return_tensors="pt"
        ).input_ids
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, recipe.train_timesteps, (len(x0),), generator=rng)
        target = noise if recipe.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running += loss.item()
        if step % recipe.log_every == 0:
            curve.append({"part": "unet", "step": step, "loss": round(running / recipe.log_every, 5)})
            print(
                f"train_text_to_image unet step {step}/{recipe.steps} loss {curve[-1]['loss']:.4f} "
                f"({time.time() - start:.0f}s)",
                flush=True,
            )
            running = 0.0
    return unet.eval(), text_encoder.eval(), scheduler


def train_text_to_image(images, labels, recipe: TextToImageTrainingSettings) -> tuple:
    """The generator, its metrics and its training curve, trained on the images of TEXT_CONCEPTS only."""
    keep = labels < len(TEXT_CONCEPTS)  # they are the first labels; the prepared splits may hold more domains
    images, labels = images[keep], labels[keep]
    torch.manual_seed(recipe.seed)
    start, curve = time.time(), []
    texts = [text for c in TEXT_CONCEPTS for text in captions(c)]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(texts, recipe.vocab_size, recipe.tokens, Path(tmp))
    vae = train_vae(images, labels, recipe, curve)
    unet, text_encoder, scheduler = train_denoiser(images, labels, vae, tokenizer, recipe, curve)
    generator = TextToImageGenerator(unet, vae, text_encoder, tokenizer, scheduler).eval().requires_grad_(False)
    metrics = {
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
        "vocabulary": len(tokenizer),
        "final_loss": curve[-1]["loss"],
        "train_seconds": round(time.time() - start, 1),
    }
    return generator, metrics, curve


if __name__ == "__main__":
    settings = stage_settings(__doc__)
    images, labels = load_split("train", settings.paths.prepared)
    generator, metrics, curve = train_text_to_image(images, labels, settings.text_to_image)
    out = settings.paths.text_to_image
    generator.save(out)
    (out / "concepts.yaml").write_text(yaml.safe_dump(prompt_sets(list(TEXT_CONCEPTS)), sort_keys=False))
    write_metrics(settings.paths.metrics / "text_to_image.json", metrics)
    write_curve(settings.paths.metrics / "train_text_to_image_curve.csv", curve)
    print(json.dumps(metrics))
