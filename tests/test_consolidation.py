"""Consolidation on real stacks: the folded adapter reproduces the stack at one field per site (or one in all),
refuses sites the stack's effect could bypass, and folds only what is switched on."""

from __future__ import annotations

import pytest
import torch

from lethe.models.adapter_stack import AdapterStack
from lethe.models.consolidation import active_sites, record_sites
from lethe.models.ode_adapter import ODEAdapter
from lethe.tasks.steps.consolidate import consolidate, row_indices
from tests.conftest import ode_config, small_settings, tiny_generator


@pytest.fixture
def generator():
    return tiny_generator()


def moved(channels: int, seed: int) -> ODEAdapter:
    """A field that changes its features (a trained adapter's stand-in)."""
    torch.manual_seed(seed)
    adapter = ODEAdapter(channels, ode_config())
    torch.nn.init.normal_(adapter.field.outer.weight, std=0.05)
    return adapter.requires_grad_(False)


def two_request_stack(generator) -> AdapterStack:
    stack = AdapterStack()
    stack.add("request-1", {t: moved(generator.feature_channels(t), 1) for t in ("mid_block", "up_blocks.0")}, 2.0)
    stack.add("request-2", {"up_blocks.0.resnets.0": moved(generator.feature_channels("up_blocks.0.resnets.0"), 2)})
    return stack


def rows(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 100, (n,), generator=g), torch.arange(n) % 20


def distance(generator, stack, reference):
    x, t, y = rows(seed=9)
    return float((generator.predict_noise(x, t, y, stack)[0] - reference).pow(2).mean())


@pytest.mark.parametrize("site", [None, "up_blocks.0"])
def test_the_folded_adapter_reproduces_the_stack(generator, site):
    stack = two_request_stack(generator)
    settings = small_settings(consolidate__rows=256, consolidate__steps=300, consolidate__batch_size=64)
    config = settings.consolidate.model_copy(update={"site": site})
    result = consolidate(generator, stack, "folded", settings.adapter, config, settings.sampling)
    folded = result.consolidated
    assert result.folded == ["request-1", "request-2"]
    assert folded.stack.names == ["folded"] and folded.stack.slots["folded"].intensity == 1.0
    expected_sites = ["mid_block", "up_blocks.0.resnets.0", "up_blocks.0"] if site is None else ["up_blocks.0"]
    assert sorted(folded.stack.slots["folded"].targets) == sorted(expected_sites)
    assert set(folded.unexplained) == set(expected_sites)
    assert all(0 <= v < 0.5 for v in folded.unexplained.values()), folded.unexplained
    x, t, y = rows(seed=9)
    target = generator.predict_noise(x, t, y, stack)[0]
    # on rows it never saw: much nearer the stack than the plain network is
    assert distance(generator, folded.stack, target) < 0.5 * distance(generator, None, target)
    assert folded.trainable_params == sum(p.numel() for p in folded.stack.parameters())


def test_recorded_features_are_before_and_after_the_stack(generator):
    stack = two_request_stack(generator)
    x, t, y = rows(8)
    features = record_sites(generator.unet, stack, lambda r: generator.predict_noise(x[r], t[r], y[r]), 8, 3)
    assert features.sites == active_sites(stack) == ["mid_block", "up_blocks.0", "up_blocks.0.resnets.0"]
    assert len(features) == 8
    # at mid_block, the only adapter is request-1's: after = its end state of before
    field = stack.field("request-1", "mid_block")
    with torch.no_grad():
        expected = field(features.inputs["mid_block"], 2.0)
    assert torch.allclose(features.outputs["mid_block"], expected, atol=1e-5)
    single = record_sites(
        generator.unet, stack, lambda r: generator.predict_noise(x[r], t[r], y[r]), 8, 3, site="up_blocks.0"
    )
    assert single.sites == ["up_blocks.0"]
    # one site: its input is the plain network's output there, its target the stack's
    module, seen = dict(generator.unet.named_modules())["up_blocks.0"], {}
    handle = module.register_forward_hook(lambda m, a, o: seen.update(plain=o))
    generator.predict_noise(x, t, y)
    handle.remove()
    with stack.attached(generator.unet):  # a hook added after the stack's sees its rewrite
        handle = module.register_forward_hook(lambda m, a, o: seen.update(stacked=o))
        generator.predict_noise(x, t, y)
        handle.remove()
    assert torch.allclose(single.inputs["up_blocks.0"], seen["plain"], atol=1e-5)
    assert torch.allclose(single.outputs["up_blocks.0"], seen["stacked"], atol=1e-5)
    assert not torch.allclose(single.inputs["up_blocks.0"], single.outputs["up_blocks.0"])


def test_a_single_site_the_stack_could_bypass_is_refused(generator):
    stack = two_request_stack(generator)
    settings = small_settings()
    for site, message in (
        ("up_blocks.0.resnets.0", "whole decoder stage"),
        ("mid_block", "after consolidate.site 'mid_block'"),
        ("up_blocks.7", "not a module"),
    ):
        with pytest.raises((ValueError, KeyError), match=message):
            consolidate(
                generator,
                stack,
                "folded",
                settings.adapter,
                settings.consolidate.model_copy(update={"site": site}),
                settings.sampling,
            )


def test_only_switched_on_adapters_are_folded_and_one_is_not_enough(generator):
    stack = two_request_stack(generator)
    settings = small_settings(consolidate__site=None)
    stack.disable("request-2")
    with pytest.raises(ValueError, match="nothing to consolidate: the stack holds 1 active adapter"):
        consolidate(generator, stack, "folded", settings.adapter, settings.consolidate, settings.sampling)
    stack.add("request-3", {"mid_block": moved(generator.feature_channels("mid_block"), 3)})
    result = consolidate(generator, stack, "folded", settings.adapter, settings.consolidate, settings.sampling)
    assert result.folded == ["request-1", "request-3"]
    assert sorted(result.consolidated.stack.slots["folded"].targets) == ["mid_block", "up_blocks.0"]


def test_a_text_to_image_stack_folds_into_one_field_per_site(tmp_path):
    from lethe.tasks.concept_sets import load_concept_set
    from tests.sd_folder import tiny_text_to_image
    from tests.test_text_unlearning import concept_file

    generator = tiny_text_to_image(tmp_path)
    generator.with_concepts(load_concept_set(concept_file(tmp_path)).concepts)
    stack = AdapterStack()
    for i, target in enumerate(("mid_block", "up_blocks.0"), start=1):
        stack.add(f"request-{i}", {target: moved(generator.feature_channels(target), i)})
    settings = small_settings(
        consolidate__site=None, consolidate__rows=512, consolidate__steps=400, consolidate__batch_size=64
    )  # params.text-to-image.yaml's: its fixed targets are the fold's sites
    result = consolidate(generator, stack, "folded", settings.adapter, settings.consolidate, settings.sampling)
    assert result.consolidated.stack.slots["folded"].targets == ["mid_block", "up_blocks.0"]
    latents = torch.randn(6, *generator.latent_shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([5, 20, 40, 60, 80, 95])
    text = generator.encode_prompts(["a dress", "the digit 3", "a leather bag"] * 2)
    target = generator.predict_noise(latents, t, text, stack)[0]

    def gap(adapters):
        return float((generator.predict_noise(latents, t, text, adapters)[0] - target).pow(2).mean())

    assert gap(result.consolidated.stack) < 0.5 * gap(None)
    # the attack against a fold (textual inversion here) gives rows of the stack's features under its vector
    from lethe.tasks.steps.consolidate import attack_rounds

    config = settings.consolidate.model_copy(update={"attack_rounds": 1, "attack_rows": 4})
    attacked = attack_rounds(generator, stack, ["dress"], config, settings.recovery, settings.sampling)
    found = attacked(result.consolidated.stack, 0)
    assert found.sites == ["mid_block", "up_blocks.0"] and len(found) == 4
    assert not torch.allclose(found.inputs["mid_block"], found.outputs["mid_block"])  # the stack rewrites them


def test_the_fit_rows_can_lean_on_the_forgotten_concepts():
    concepts = torch.arange(20).repeat_interleave(10)  # 10 samples of each of 20 concepts
    drawn = row_indices(concepts, [3, 7], 1000, 0.5, torch.Generator().manual_seed(0))
    assert len(drawn) == 1000 and int(torch.isin(concepts[drawn], torch.tensor([3, 7])).sum()) == 500
    assert set(concepts[drawn].tolist()) == set(range(20))  # the other half still covers every other concept
    # no share (or nothing forgotten): the draw the fold has always made, bit for bit
    for forgotten, share in (([3, 7], None), ([], 0.5)):
        alike = row_indices(concepts, forgotten, 1000, share, torch.Generator().manual_seed(0))
        assert torch.equal(alike, torch.randint(200, (1000,), generator=torch.Generator().manual_seed(0)))
    # every concept forgotten: the rows have nowhere else to come from
    everything = row_indices(concepts, list(range(20)), 100, 0.5, torch.Generator().manual_seed(0))
    assert len(everything) == 100


def test_a_fold_weighted_to_forgotten_concepts_checks_their_names(generator):
    stack = two_request_stack(generator)
    settings = small_settings(consolidate__forgotten_share=0.5)
    args = ("folded", settings.adapter, settings.consolidate, settings.sampling)
    with pytest.raises(ValueError, match=r"forgotten concept\(s\) \['nonsense'\] are not the generator's"):
        consolidate(generator, stack, *args, forgotten=("nonsense",))
    result = consolidate(generator, stack, *args, forgotten=(generator.concepts[0],), recovery=settings.recovery)
    assert result.folded == ["request-1", "request-2"]


def test_a_fold_fitted_in_rounds_learns_the_stack_where_the_attack_asks(generator):
    """After each phase the attack runs against the fold as it stands (frozen); its rows, the stack's features
    under the vector found, join the fit. Scored on the rows of an attack the fit never saw, such a fold is
    nearer the stack there than the same fold fitted without rounds."""
    from lethe.tasks.steps.consolidate import attack_rounds

    stack = two_request_stack(generator)
    settings = small_settings(
        consolidate__rows=256,
        consolidate__steps=300,
        consolidate__batch_size=64,
        consolidate__attack_rows=64,
        recovery__steps=20,
    )
    forgotten = generator.concepts[:2]
    base = settings.consolidate.model_copy(update={"site": "up_blocks.0", "attack_rounds": 0})  # folds well there
    args = ("folded", settings.adapter, base, settings.sampling)
    plain = consolidate(generator, stack, *args, forgotten=tuple(forgotten))
    config = base.model_copy(update={"attack_rounds": 2})
    args = ("folded", settings.adapter, config, settings.sampling)
    with pytest.raises(ValueError, match="needs the recovery settings"):
        consolidate(generator, stack, *args, forgotten=tuple(forgotten))
    short = ("folded", settings.adapter, config.model_copy(update={"steps": 10}), settings.sampling)
    nothing_forgotten = consolidate(generator, stack, *short)  # nothing to attack: no rounds, no budget needed
    assert not any("round" in h for h in nothing_forgotten.consolidated.history)
    attacked = consolidate(generator, stack, *args, forgotten=tuple(forgotten), recovery=settings.recovery)
    rounds = [h for h in attacked.consolidated.history if "round" in h]
    assert [(h["step"], h["round"], h["attacked_rows"]) for h in rounds] == [(100, 1, 128), (200, 2, 256)]
    other = config.model_copy(update={"seed": 99})  # the attacker's samples and seeds the fit never drew
    held_out = attack_rounds(generator, stack, forgotten, other, settings.recovery, settings.sampling)(
        plain.consolidated.stack, 7
    )

    def left(result) -> float:
        fold = result.consolidated.stack
        err = sum(
            float((fold.field("folded", s)(held_out.inputs[s]) - held_out.outputs[s]).pow(2).sum())
            for s in held_out.sites
        )
        return err / sum(float((held_out.outputs[s] - held_out.inputs[s]).pow(2).sum()) for s in held_out.sites)

    assert left(attacked) < 0.9 * left(plain), (left(attacked), left(plain))


def test_a_fit_in_rounds_attacks_a_frozen_fold_and_refuses_bad_rounds():
    from lethe.models.consolidation import SiteFeatures, fit_consolidated

    features = SiteFeatures({"a": torch.randn(64, 4, 2, 2)}, {"a": torch.randn(64, 4, 2, 2)})
    seen = []

    def attacked(fold, round_):
        seen.append((round_, [p.requires_grad for p in fold.parameters()]))
        return SiteFeatures({"a": torch.randn(8, 4, 2, 2)}, {"a": torch.randn(8, 4, 2, 2)})

    args = (features, ode_config(), "folded", 30, 16, 0.01, 0.0, 0)
    fit_consolidated(*args, rounds=2, attacked=attacked, attacked_share=0.25)
    assert [r for r, _ in seen] == [0, 1] and not any(any(g) for _, g in seen)
    with pytest.raises(ValueError, match="needs `attacked`"):
        fit_consolidated(*args, rounds=1)
    with pytest.raises(ValueError, match="must give at least one attacked row"):
        fit_consolidated(*args, rounds=1, attacked=attacked, attacked_share=0.01)
    with pytest.raises(ValueError, match="features of different sites"):
        SiteFeatures.cat([features, SiteFeatures({"b": torch.randn(2, 4, 2, 2)}, {"b": torch.randn(2, 4, 2, 2)})])
