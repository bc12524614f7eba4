"""Forget-loss saliency ranks the blocks a change would matter at, and top-k keeps UNet order."""

import pytest
import torch

from lethe.models.saliency import block_saliency, top_k
from tests.conftest import tiny_generator


def test_saliency_is_zero_where_the_loss_does_not_depend_on_the_block_output():
    generator = tiny_generator()
    x, t, y = torch.randn(4, 1, 16, 16), torch.randint(0, 100, (4,)), torch.randint(0, 20, (4,))
    eps, _ = generator.predict_noise(x, t, y)
    candidates = ["mid_block", "up_blocks.0", "up_blocks.1"]
    zero = block_saliency(generator, None, candidates, x, t, y, eps)  # student == target: no gradient
    assert all(v == 0.0 for v in zero.values())
    scores = block_saliency(generator, None, candidates, x, t, y, torch.zeros_like(eps))
    assert set(scores) == set(candidates) and all(v > 0 for v in scores.values())
    assert not any(p.requires_grad for p in generator.parameters())  # the base stays frozen


def test_top_k_and_bad_candidates():
    assert top_k({"a": 1.0, "b": 3.0, "c": 2.0}, 2) == ["b", "c"]
    assert top_k({"a": 5.0, "b": 3.0, "c": 2.0}, 2) == ["a", "b"]
    with pytest.raises(ValueError):
        top_k({"a": 1.0}, 2)
    generator = tiny_generator()
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(KeyError, match="not_a_block"):
        block_saliency(
            generator, None, ["not_a_block"], x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), x
        )
