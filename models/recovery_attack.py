"""A white-box recovery attack on a class-conditional or text-to-image generator: can a forgotten concept return?

The attacker holds the production model (UNet, scheduler, adapter stack, all frozen) and real images of the
concept, but no label that still works. It optimises one free vector in the class-embedding space (the
counterpart of textual inversion for a model conditioned on a class embedding) with the diffusion loss on those
images, then samples with that vector. If the samples are judged to be the concept again, the forgetting yields
to the attack. Run on the base model, the same attack must succeed, otherwise it is too weak to mean anything.

`recover_embedding` starts from the mean of the concept embeddings (not from the concept's own row, which the
attacker of a real system would not know is special) and takes `steps` Adam steps of `batch_size` noised images
each: that is the attack's budget. `sample_with_embedding` draws DDIM samples with the vector in place of the
concept's embedding (the null class, for guidance, is left alone).

`resurrect` is the other way back: a short fine-tune of every UNet weight, adapters attached and frozen, on
retained images only. A concept that returns after it was never shown was only hidden.

For a text-to-image model the counterpart is textual inversion: `recover_token_embedding` optimises one vector in
the text encoder's input token-embedding space, at a placeholder token in the prompt `TOKEN_TEMPLATE`, with the
model's own training loss (ε or v, as its scheduler says) on latents of images of the concept, and
`sample_with_token_embedding` samples that prompt through the generator's own guided sampler. The vector starts
at the mean token embedding, not at the concept's words, and moves in units of the table's standard deviation,
so one `lr` means the same on a table of std 0.02 (a CLIP text encoder) as on one of std 1 (a class table).
Which images the attacker holds is the audit's choice (`tasks/steps/recovery_audit.py`).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.sampler import concept_noise, ddim_sample

if TYPE_CHECKING:
    from lethe.models.text_generator import TextToImageGenerator

TOKEN_TEMPLATE = "{}"  # the textual-inversion prompt: the placeholder alone (why: `recover_token_embedding`)


@contextmanager
def embedding_in_place_of(generator: Generator, label: int, vector: torch.Tensor):
    """While open, every row conditioned on `label` gets `vector` as its class embedding (a forward hook on
    the UNet's class-embedding table; gradients flow into `vector`)."""
    table = generator.unet.class_embedding
    if not isinstance(table, torch.nn.Embedding):
        raise ValueError("the recovery attack needs a UNet conditioned on a class-embedding table")
    with row_in_place_of(table, label, vector):
        yield


@contextmanager
def row_in_place_of(table: torch.nn.Embedding, index: int, vector: torch.Tensor):
    """While open, every lookup of `index` in `table` returns `vector` (a forward hook; the table's weights are
    never written, and gradients flow into `vector`)."""
    if vector.shape != (table.embedding_dim,):
        raise ValueError(f"the vector must have shape ({table.embedding_dim},), got {tuple(vector.shape)}")

    def replace(module, args, output):
        rows = (args[0] == index).unsqueeze(-1)
        return torch.where(rows, vector.to(output.dtype).expand_as(output), output)

    handle = table.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def recover_embedding(
    generator: Generator,
    adapters: AdapterStack | None,
    images: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, list[float]]:
    """Optimise a class-embedding vector so that the frozen model denoises `images` (real images of the
    concept, in [-1, 1]) as if conditioned on it; returns the vector and the loss of every step."""
    if steps < 1 or batch_size < 1 or len(images) == 0:
        raise ValueError("the attack needs steps >= 1, batch_size >= 1 and at least one image")
    table = generator.unet.class_embedding.weight
    label = generator.null_label - 1  # any concept's slot: the hook replaces it, the table is not read
    vector = table[: generator.null_label].detach().mean(0).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([vector], lr=lr)
    rng = torch.Generator().manual_seed(seed)
    train_steps = generator.scheduler.config.num_train_timesteps
    device = table.device
    losses = []
    with embedding_in_place_of(generator, label, vector):
        for _ in range(steps):
            rows = torch.randint(len(images), (batch_size,), generator=rng)
            x0 = images[rows].to(device)
            noise = torch.randn(x0.shape, generator=rng).to(device)
            t = torch.randint(train_steps, (batch_size,), generator=rng).to(device)
            xt = generator.scheduler.add_noise(x0, noise, t)
            labels = torch.full((batch_size,), label, device=device)
            eps, _ = generator.predict_noise(xt, t, labels, adapters)
            loss = F.mse_loss(eps, noise)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    return vector.detach(), losses


@torch.no_grad()
def sample_with_embedding(
    generator: Generator,
    adapters: AdapterStack | None,
    vector: torch.Tensor,
    n: int,
    seed: int,
    steps: int,
    guidance: float = 1.0,
    batch_size: int = 256,
) -> torch.Tensor:
    """n DDIM samples conditioned on `vector` instead of a concept's embedding, in [-1, 1]."""
    label = generator.null_label - 1
    noise = concept_noise(generator.image_shape, n, seed, label)
    device = generator.unet.device
    out = []
    with embedding_in_place_of(generator, label, vector.to(device)):
        for start in range(0, n, batch_size):
            chunk = noise[start : start + batch_size].to(device)
            labels = torch.full((len(chunk),), label, device=device)
            out.append(ddim_sample(generator, labels, chunk, steps, adapters, guidance).cpu())
    return torch.cat(out)


def resurrect(
    generator: Generator,
    adapters: AdapterStack | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> Generator:
    """A copy of `generator` fine-tuned for `steps` Adam steps with the diffusion loss on `images` (retained
    concepts only, with their `labels`) under the frozen adapter stack; the original is left untouched."""
    if steps < 1 or batch_size < 1 or len(images) == 0 or len(images) != len(labels):
        raise ValueError("resurrection needs steps >= 1, batch_size >= 1 and one label per image")
    tuned = copy.deepcopy(generator)
    tuned.unet.requires_grad_(True).train()
    optimiser = torch.optim.Adam(tuned.unet.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    train_steps = tuned.scheduler.config.num_train_timesteps
    device = tuned.unet.device
    for _ in range(steps):
        rows = torch.randint(len(images), (batch_size,), generator=rng)
        x0, y = images[rows].to(device), labels[rows].to(device)
        noise = torch.randn(x0.shape, generator=rng).to(device)
        t = torch.randint(train_steps, (batch_size,), generator=rng).to(device)
        eps, _ = tuned.predict_noise(tuned.scheduler.add_noise(x0, noise, t), t, y, adapters)
        loss = F.mse_loss(eps, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return tuned.eval().requires_grad_(False)


def attack_prompt(tokenizer, template: str = TOKEN_TEMPLATE) -> tuple[str, int]:
    """The attack's prompt and its placeholder token: `template` around the first word of the vocabulary (by id)
    that the tokenizer encodes as one token found nowhere else in the prompt nor in the empty prompt. Its own
    embedding is never read (the hook replaces it), so which word it is does not matter; finding it the same way
    every time keeps the prompt, and so the sampler's noise, the same for every version of a model."""
    taken = set(tokenizer("").input_ids) | set(tokenizer.all_special_ids)
    for token in (t for t in range(len(tokenizer)) if t not in taken):
        word = tokenizer.decode([token]).strip()
        if not word or tokenizer(word, add_special_tokens=False).input_ids != [token]:
            continue
        prompt = template.format(word)
        if tokenizer(prompt, add_special_tokens=False).input_ids.count(token) == 1:
            return prompt, token
    raise ValueError("no word of the tokenizer's vocabulary encodes as a single token of its own")


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learnt to predict, as the scheduler config says (and `train_text_to_image` trains it)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"the recovery attack knows epsilon and v_prediction models, not {kind!r}")


@torch.no_grad()
def encode_latents(generator: TextToImageGenerator, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] as the latents the UNet is trained on: the VAE posterior's mean times its scale."""
    device = generator.vae.device
    means = [
        generator.vae.encode(images[i : i + batch_size].to(device)).latent_dist.mean.cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(means) * generator.vae_scale


def recover_token_embedding(
    generator: TextToImageGenerator,
    adapters: AdapterStack | None,
    latents: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, list[float]]:
    """Textual inversion against the frozen model and adapter stack: one vector at the placeholder token of
    `TOKEN_TEMPLATE`, optimised so that the model denoises `latents` (scaled VAE latents of the concept) as if
    prompted with it; returns the vector and the loss of every step.

    The template is the placeholder alone. Every token the UNet attends to is then the vector or one that
    follows it (the end and padding tokens see it through the text encoder's causal attention), so no template
    word an unlearning step may have trained on ("a photo of ...") stands between the attacker and the model,
    and the prompt suits any tokenizer; a bare name is also one of the embedded model's caption forms
    (`models.captions.TEMPLATES`). The loss is the model's training loss at uniform timesteps."""
    if steps < 1 or batch_size < 1 or len(latents) == 0:
        raise ValueError("the attack needs steps >= 1, batch_size >= 1 and at least one latent")
    prompt, token = attack_prompt(generator.tokenizer)
    encoder, scheduler, device = generator.text_encoder, generator.scheduler, generator.unet.device
    ids = generator.tokenizer(
        [prompt], padding="max_length", max_length=generator.tokenizer.model_max_length, truncation=True
    ).input_ids
    ids = torch.tensor(ids, device=encoder.device)
    table = encoder.get_input_embeddings()
    start, scale = table.weight.detach().mean(0), table.weight.detach().std()
    move = torch.zeros_like(start, requires_grad=True)  # from `start`, in units of the table's std
    optimiser = torch.optim.Adam([move], lr=lr)
    rng = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        with row_in_place_of(table, token, start + scale * move):
            text = encoder(ids)[0].to(device)
        x0 = latents[torch.randint(len(latents), (batch_size,), generator=rng)].to(device)
        noise = torch.randn(x0.shape, generator=rng).to(device)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=rng).to(device)
        pred, _ = generator.predict_noise(
            scheduler.add_noise(x0, noise, t), t, text.expand(batch_size, -1, -1), adapters
        )
        loss = F.mse_loss(pred, training_target(scheduler, x0, noise, t))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return (start + scale * move).detach(), losses


@contextmanager
def attack_prompt_reading(generator: TextToImageGenerator, vector: torch.Tensor):
    """While open, the attack's prompt (yielded) reads `vector` at its placeholder."""
    prompt, token = attack_prompt(generator.tokenizer)
    table = generator.text_encoder.get_input_embeddings()
    with row_in_place_of(table, token, vector.to(table.weight.device)):
        yield prompt


@torch.no_grad()
def token_embedding_features(generator: TextToImageGenerator, vector: torch.Tensor) -> torch.Tensor:
    """The text features (1, tokens, dim) of the attack's prompt with `vector` at its placeholder: what the UNet
    attends to when an attacker prompts with what `recover_token_embedding` found."""
    with attack_prompt_reading(generator, vector) as prompt:
        return generator.encode_prompts([prompt])


@torch.no_grad()
def sample_with_token_embedding(
    generator: TextToImageGenerator,
    adapters: AdapterStack | None,
    vector: torch.Tensor,
    n: int,
    seed: int,
    steps: int,
    guidance: float,
    batch_size: int = 64,
    latents: bool = False,
) -> torch.Tensor:
    """n samples of the attack's prompt with `vector` at its placeholder, in [-1, 1] (with `latents`, undecoded),
    drawn by the generator's own guided DDIM sampler; guidance's unconditional branch (the empty prompt) holds
    no placeholder and is left alone."""
    with attack_prompt_reading(generator, vector) as prompt:
        return generator.sample([prompt], n, seed, steps, guidance, adapters, batch_size, latents)
