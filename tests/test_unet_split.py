"""The UNet cut in two (encoder cached, decoder trained) computes exactly what the whole UNet computes."""

import pytest
import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.distill_targets import DistillTargets
from lethe.models.ode_adapter import ODEAdapter
from lethe.models.unet_split import Encoded, decode, decode_to, decoder_stage, in_decoder, last_stage, splittable
from tests.conftest import ode_config, tiny_generator


def test_decode_of_encode_equals_the_full_forward_pass_with_adapters():
    generator = tiny_generator()
    stack = AdapterStack()
    for i, target in enumerate(("mid_block", "up_blocks.0", "down_blocks.0.resnets.0")):
        adapter = ODEAdapter(generator.feature_channels(target), ode_config(solver="rk4", sampling_steps=None))
        torch.nn.init.normal_(adapter.field.outer.weight, std=0.2)
        stack.add(f"request-{i}", {target: adapter})
    x, t, y = torch.randn(5, 1, 16, 16), torch.randint(0, 100, (5,)), torch.randint(0, 21, (5,))
    whole, _ = generator.predict_noise(x, t, y, stack)
    split, _ = generator.decode(generator.encode(x, t, y, stack), stack)
    assert torch.equal(whole, split)
    plain, _ = generator.predict_noise(x, t, y)
    assert not torch.allclose(plain, whole)  # the adapters did act
    rows = Encoded.cat([generator.encode(x[:2], t[:2], y[:2]), generator.encode(x[2:], t[2:], y[2:])])
    assert torch.allclose(generator.decode(rows.rows(torch.tensor([4, 0])))[0], plain[[4, 0]], atol=1e-5)


def test_only_decoder_modules_count_as_decoder_and_the_unet_splits():
    assert splittable(tiny_generator().unet)
    assert in_decoder("mid_block") and in_decoder("up_blocks.1.resnets.0")
    assert not in_decoder("down_blocks.0") and not in_decoder("conv_in")


def test_decoding_to_a_stage_stops_there_and_decoding_the_rest_finishes_the_pass():
    generator = tiny_generator()
    x, t, y = torch.randn(3, 1, 16, 16), torch.randint(0, 100, (3,)), torch.randint(0, 21, (3,))
    seen = {}
    handle = generator.unet.up_blocks[1].register_forward_hook(lambda m, a, out: seen.update(out=out))
    try:
        whole = generator.unet(x, t, class_labels=y).sample
    finally:
        handle.remove()
    encoded = generator.encode(x, t, y)
    state = decode_to(generator.unet, encoded, "up_blocks.1")
    assert torch.allclose(state.sample, seen["out"], atol=1e-6)
    assert torch.allclose(decode(generator.unet, state.rows(torch.tensor([2, 0]))), whole[[2, 0]], atol=1e-5)
    early = decode_to(generator.unet, encoded, "mid_block")
    assert early.sample.shape == encoded.sample.shape and early.stages_done == 1
    assert torch.allclose(decode_to(generator.unet, early, "up_blocks.1").sample, state.sample, atol=1e-6)
    with pytest.raises(KeyError, match="not a decoder stage"):
        decode_to(generator.unet, encoded, "up_blocks.9")


def test_the_last_stage_is_the_deepest_one_holding_a_target():
    unet = tiny_generator().unet
    assert decoder_stage("up_blocks.0.resnets.1") == "up_blocks.0" and decoder_stage("conv_out") is None
    assert last_stage(unet, ["up_blocks.0.resnets.1", "mid_block"]) == "up_blocks.0"
    assert last_stage(unet, ["mid_block"]) == "mid_block"
    assert last_stage(unet, ["up_blocks.0", "conv_norm_out"]) is None  # the head needs the whole decoder
    assert last_stage(unet, ["down_blocks.0"]) is None


def test_pool_rows_hold_the_teachers_anchor_prediction_for_forget_rows():
    generator = tiny_generator()
    forget, retain = torch.rand(3, 1, 16, 16), torch.rand(6, 1, 16, 16)
    retain_labels = torch.tensor([2, 3, 4, 5, 6, 7])
    pool = DistillTargets.build(
        generator, None, forget, retain, retain_labels, 1, 3, forget_rows=4, retain_rows=8, seed=0
    )
    assert len(pool) == 12 and pool.n_forget == 4
    assert pool.student_cond[:4].tolist() == [1] * 4 and set(pool.student_cond[4:].tolist()) <= set(range(2, 8))
    anchor_eps, _ = generator.predict_noise(pool.xt[:4], pool.t[:4], torch.full((4,), 3))
    assert torch.allclose(pool.teacher_eps[:4], anchor_eps, atol=1e-6)
    same, _ = generator.predict_noise(pool.xt[4:], pool.t[4:], pool.student_cond[4:])
    assert torch.allclose(pool.teacher_eps[4:], same, atol=1e-6)
    idx = pool.draw(2, 3, torch.Generator().manual_seed(0))
    assert (idx[:2] < 4).all() and (idx[2:] >= 4).all()
    pool.cache_encoder(generator, None)
    assert torch.allclose(
        generator.decode(pool.encoded)[0], generator.predict_noise(pool.xt, pool.t, pool.student_cond)[0], atol=1e-6
    )


def test_a_pool_without_retain_targets_runs_the_teacher_on_forget_rows_only():
    generator = tiny_generator()
    forget, retain = torch.rand(3, 1, 16, 16), torch.rand(6, 1, 16, 16)
    labels = torch.tensor([2, 3, 4, 5, 6, 7])
    full = DistillTargets.build(generator, None, forget, retain, labels, 1, 3, 4, 8, seed=0)
    lean = DistillTargets.build(generator, None, forget, retain, labels, 1, 3, 4, 8, seed=0, retain_targets=False)
    assert torch.equal(lean.xt, full.xt) and torch.allclose(lean.teacher_eps[:4], full.teacher_eps[:4])
    assert torch.isnan(lean.teacher_eps[4:]).all()
