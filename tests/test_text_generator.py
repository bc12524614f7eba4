"""The text-to-image generator on a tiny random Stable-Diffusion-layout folder: it loads what diffusers
loads, samples what diffusers' own pipeline samples, and carries named ODE adapters on both guidance branches."""

import pytest
import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator_kinds import kind_of, load_generator
from lethe.models.ode_adapter import ODEAdapter
from lethe.models.text_generator import TextToImageGenerator, prompt_seed
from tests.conftest import ode_config, tiny_generator
from tests.sd_folder import tiny_sd_folder


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def folder(request, tmp_path_factory):
    return tiny_sd_folder(tmp_path_factory.mktemp("sd"), request.param)


def test_the_folder_loads_as_lethe_and_as_diffusers_loads_it_and_both_sample_the_same(folder):
    from diffusers import StableDiffusionPipeline

    generator = load_generator(folder)
    assert isinstance(generator, TextToImageGenerator) and kind_of(folder) == "text-to-image"
    assert generator.scheduler.config.prediction_type == folder.name.removeprefix("sd-")
    prompt, seed, steps, guidance = "a pair of pants", 3, 5, 3.0
    ours = generator.sample([prompt], 2, seed, steps, guidance)
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    noise = torch.randn(
        (2, *generator.latent_shape), generator=torch.Generator().manual_seed(prompt_seed(seed, prompt))
    )
    theirs = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise,
        output_type="pt",
        num_images_per_prompt=2,
    ).images
    assert ours.shape == (2, 1, 16, 16)
    assert torch.allclose((ours + 1) / 2, theirs, atol=1e-4), float(((ours + 1) / 2 - theirs).abs().max())


def test_samples_are_fixed_by_seed_and_prompt_whatever_else_is_asked(folder):
    generator = load_generator(folder)
    a = generator.sample(["a dress", "a winter coat"], 2, 5, 4, 2.0)
    b = generator.sample(["a winter coat"], 2, 5, 4, 2.0, batch_size=1)
    assert torch.allclose(a[2:], b, atol=1e-5)
    assert torch.equal(a, generator.sample(["a dress", "a winter coat"], 2, 5, 4, 2.0))
    assert not torch.allclose(a[:2], generator.sample(["a dress"], 2, 6, 4, 2.0))
    with pytest.raises(ValueError, match="guidance"):
        generator.sample(["a dress"], 1, 0, 2, 0.5)


def test_adapters_attach_by_name_to_mid_and_cross_attention_blocks_on_both_guidance_branches(folder):
    generator = load_generator(folder)
    targets = ["mid_block", "up_blocks.1"]  # up_blocks.1 is a CrossAttnUpBlock2D
    fields = {t: ODEAdapter(generator.feature_channels(t), ode_config()) for t in targets}
    stack = AdapterStack()
    stack.add("request-1", fields)
    plain = generator.sample(["a leather bag"], 2, 0, 3, 2.0)
    assert torch.equal(plain, generator.sample(["a leather bag"], 2, 0, 3, 2.0, adapters=stack))  # identity at init
    for field in fields.values():
        torch.nn.init.normal_(field.field.outer.weight, std=0.3)
    rows = []
    handle = fields["up_blocks.1"].register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    try:
        adapted = generator.sample(["a leather bag"], 2, 0, 3, 2.0, adapters=stack)
    finally:
        handle.remove()
    assert not torch.allclose(adapted, plain)
    assert rows == [4, 4, 4]  # 3 steps, each one call on 2 unconditional + 2 conditional rows
    stack.disable("request-1")
    assert torch.equal(generator.sample(["a leather bag"], 2, 0, 3, 2.0, adapters=stack), plain)


def test_kind_comes_from_the_folder_and_a_disagreeing_setting_is_refused(folder, tmp_path):
    lethe_folder = tiny_generator().save(tmp_path / "class-conditional")
    assert kind_of(lethe_folder) == "class-conditional"
    assert load_generator(lethe_folder).kind == "class-conditional"
    with pytest.raises(ValueError, match="holds a text-to-image generator, but the settings say 'class-conditional'"):
        load_generator(folder, "class-conditional")
    with pytest.raises(FileNotFoundError, match="holds no generator"):
        kind_of(tmp_path / "empty")
