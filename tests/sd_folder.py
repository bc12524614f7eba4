"""A tiny, randomly initialised Stable-Diffusion-layout folder, built offline: a BPE tokenizer trained here,
a small CLIP text encoder, a 1-channel AutoencoderKL (16x16 -> 4x8x8) and a cross-attention UNet."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from lethe.models.text_generator import TextToImageGenerator

CORPUS = [
    "a photo of trousers",
    "a pair of pants",
    "a pair of slacks",
    "a handwritten three",
    "the digit 3",
    "a leather bag",
    "a winter coat",
    "a dress",
    "an ankle boot",
    "the number seven",
]
TOKENS = 16  # the tokenizer's length = the text encoder's positions


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    bpe.train_from_iterator(CORPUS * 5, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    bpe.model.save(str(folder))  # vocab.json + merges.txt, what CLIPTokenizer reads
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=TOKENS)


def tiny_text_to_image(root: Path, prediction_type: str = "epsilon", seed: int = 0) -> TextToImageGenerator:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(root / "bpe")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    # steps_offset 1 as in SD-1.x configs (StableDiffusionPipeline rewrites any other value to 1 when it loads)
    scheduler = DDIMScheduler(
        num_train_timesteps=100,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        prediction_type=prediction_type,
        steps_offset=1,
    )
    return TextToImageGenerator(unet, vae, text_encoder, tokenizer, scheduler).eval().requires_grad_(False)


def tiny_sd_folder(root: Path, prediction_type: str = "epsilon") -> Path:
    return tiny_text_to_image(root, prediction_type).save(root / f"sd-{prediction_type}")
