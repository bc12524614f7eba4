"""The long-sequence benchmark's checkpoints (not its targets): a run resumes from what it wrote, a frozen base is
not written again, and a checkpoint whose files changed is refused rather than resumed or restarted over."""

import copy
from types import SimpleNamespace

import pytest
import torch

from benchmarks.long_sequence import checkpoint_identity, choose_candidate, fold_reasons, resume, write_checkpoint
from lethe.models.adapter_stack import AdapterStack
from lethe.models.ode_adapter import ODEAdapter
from lethe.tasks.stores.integrity import IntegrityError
from tests.conftest import ode_config, shipped_settings, tiny_generator

IDENTITY = {"method": "lethe", "every": 4, "sequence": [["trouser", "dress"], ["digit_3", "digit_8"]]}


def bench_on(base):
    """What `resume` reads of a Bench: the base, and an evaluation that records what it was asked to measure."""
    asked = []
    evaluation = SimpleNamespace(measure=lambda g, s, f, _: asked.append((g, s, list(f))) or {"measured": True})
    return SimpleNamespace(base=base, eval=evaluation), asked


def one_adapter_stack(generator) -> AdapterStack:
    torch.manual_seed(3)
    adapter = ODEAdapter(generator.feature_channels("mid_block"), ode_config())
    torch.nn.init.normal_(adapter.field.outer.weight, std=0.5)
    stack = AdapterStack()
    stack.add("request-1", {"mid_block": adapter})
    return stack


def rows_up_to(step: int, name: str = "lethe") -> list[dict]:
    return [{"method": name, "step": s} for s in range(step + 1)]


def test_a_frozen_base_is_not_written_and_the_run_resumes_on_it(tmp_path):
    base = tiny_generator()
    stack = one_adapter_stack(base)
    folder = tmp_path / "long-sequence-lethe"
    progress = {"confusions": {"trouser": [1, 32]}, "rejected_at": 1}
    write_checkpoint(
        folder, IDENTITY, 1, copy.deepcopy(base), stack, ["trouser"], {"trouser": "dress"}, base, progress=progress
    )
    assert not (folder / "generator").exists() and (folder / "stack").is_dir()

    bench, asked = bench_on(base)
    resumed_run = resume(bench, folder, IDENTITY, rows_up_to(1), "lethe")
    _, generator, resumed, forgotten, anchors, parent, first, saved = resumed_run
    assert first == 2 and forgotten == ["trouser"] and anchors == {"trouser": "dress"} and parent == {"measured": True}
    assert saved == progress  # the anchors' confusions and the last rejected fold go on with the run
    assert generator is not base
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in generator.state_dict().items())
    assert resumed.state_dict().keys() == stack.state_dict().keys()
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in stack.state_dict().items())
    assert [forgotten for _, _, forgotten in asked] == [["trouser"]]


def test_a_changed_generator_is_written_and_read_back(tmp_path):
    base = tiny_generator()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        next(tuned.unet.parameters()).add_(0.25)
    folder = tmp_path / "long-sequence-dfr-ft"
    identity = dict(IDENTITY, method="dfr-ft")
    write_checkpoint(folder, identity, 1, tuned, AdapterStack(), ["trouser"], {"trouser": "dress"}, base)
    assert (folder / "generator").is_dir()

    bench, _ = bench_on(base)
    _, generator, _, _, _, _, _, _ = resume(bench, folder, identity, rows_up_to(1, "dfr-ft"), "dfr-ft")
    assert torch.equal(next(generator.unet.parameters()), next(tuned.unet.parameters()))
    assert not torch.equal(next(generator.unet.parameters()), next(base.unet.parameters()))


def test_a_checkpoint_whose_weights_changed_is_refused(tmp_path):
    base = tiny_generator()
    folder = tmp_path / "long-sequence-lethe"
    write_checkpoint(folder, IDENTITY, 1, copy.deepcopy(base), one_adapter_stack(base), ["trouser"], {}, base)
    weights = next((folder / "stack").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    bench, asked = bench_on(base)
    with pytest.raises(IntegrityError, match=f"stack/{weights.name}"):
        resume(bench, folder, IDENTITY, rows_up_to(1), "lethe")
    assert asked == []


def test_a_checkpoint_of_another_run_starts_the_sequence_over(tmp_path):
    base = tiny_generator()
    folder = tmp_path / "long-sequence-lethe"
    write_checkpoint(folder, IDENTITY, 1, copy.deepcopy(base), AdapterStack(), ["trouser"], {}, base)
    bench, _ = bench_on(base)
    assert resume(bench, folder, dict(IDENTITY, every=3), rows_up_to(1), "lethe") is None
    assert resume(bench, folder, IDENTITY, rows_up_to(0), "lethe") is None  # its rows are not all kept


def test_a_checkpoint_taken_on_another_base_is_refused(tmp_path):
    base = tiny_generator()
    folder = tmp_path / "long-sequence-lethe"
    write_checkpoint(folder, IDENTITY, 1, copy.deepcopy(base), AdapterStack(), ["trouser"], {}, base)
    bench, asked = bench_on(tiny_generator(seed=1))
    with pytest.raises(IntegrityError, match="another base"):
        resume(bench, folder, IDENTITY, rows_up_to(1), "lethe")
    assert asked == []


def test_a_baseline_checkpoint_taken_at_another_setting_starts_the_sequence_over(tmp_path):
    """A tuning round runs one baseline at several settings: a candidate must never go on from another's model."""
    settings = shipped_settings()
    sequence = [("trouser", "dress")]
    identity = checkpoint_identity("dfr-ft", 0, sequence, settings)
    other = checkpoint_identity("dfr-ft", 0, sequence, settings.override({"baselines.dfr_ft.lr": 3e-5}))
    assert identity["baseline"]["lr"] == settings.baselines.dfr_ft.lr and other["baseline"]["lr"] == 3e-5

    base = tiny_generator()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        next(tuned.unet.parameters()).add_(0.25)
    folder = tmp_path / "long-sequence-dfr-ft"
    write_checkpoint(folder, identity, 1, tuned, AdapterStack(), ["trouser"], {"trouser": "dress"}, base)
    bench, _ = bench_on(base)
    assert resume(bench, folder, other, rows_up_to(1, "dfr-ft"), "dfr-ft") is None
    assert resume(bench, folder, identity, rows_up_to(1, "dfr-ft"), "dfr-ft") is not None


def tuning_run(index: int, lr: str, retained: list[float], forget: dict[str, float]) -> list[dict]:
    """A candidate's rows as long_sequence writes them: its command, and per request the model after it."""
    command = (
        f"python benchmarks/long_sequence.py --methods dfr-ft --name dfr-ft-{index} --set baselines.dfr_ft.lr={lr}"
    )
    rows = [{"method": f"dfr-ft-{index}", "step": 0, "retain_acc": 1.0, "forget_acc_each": {}, "command": command}]
    for step, acc in enumerate(retained, start=1):
        rows.append(
            {"method": f"dfr-ft-{index}", "step": step, "retain_acc": acc, "collapsed": False, "rejected": False}
        )
        rows[-1].update(forget_acc_each=dict(list(forget.items())[:step]), command=command)
    return rows


def test_the_tuning_rule_prefers_a_candidate_that_forgets_over_one_that_retains_more():
    floors = {"letter_c": 0.004, "letter_d": 0.016}
    forgets_well = tuning_run(1, "1e-4", [0.98, 0.96], {"letter_c": 0.01, "letter_d": 0.03})
    keeps_more = tuning_run(2, "3e-5", [0.99, 0.985], {"letter_c": 0.01, "letter_d": 0.09})  # 9% > 1.6% + 3 points
    chosen = choose_candidate(keeps_more + forgets_well, floors, "dfr-ft", 2)
    assert chosen["chosen"] == "dfr-ft-1" and chosen["config"] == {"baselines.dfr_ft.lr": "1e-4"}
    assert [c["within_floors"] for c in chosen["candidates"]] == [True, False]
    assert chosen["candidates"][1]["worst_forget"] == 0.09


def test_the_tuning_rule_refuses_to_compare_an_unfinished_run():
    finished = tuning_run(1, "1e-4", [0.98, 0.96], {"letter_c": 0.01, "letter_d": 0.03})
    stopped = tuning_run(2, "3e-5", [0.99], {"letter_c": 0.01})
    with pytest.raises(ValueError, match="dfr-ft-2 did not reach request 2"):
        choose_candidate(finished + stopped, {}, "dfr-ft", 2)
    with pytest.raises(ValueError, match="no run of lethe"):
        choose_candidate(finished, {}, "lethe", 2)


def test_a_fold_may_draw_a_concept_as_often_as_its_anchor_is_judged_as_it():
    gates = shipped_settings().gates  # forget_acc_max 0.10, anchor_confusion_max 0.20
    unfolded = {"forget_acc_each": {"shirt": 0.0625, "bag": 0.0}, "gate_reasons": []}
    folded = {"forget_acc_each": {"shirt": 0.156, "bag": 0.0}, "gate_reasons": ["retained accuracy fell"]}
    flat = fold_reasons(folded, unfolded, gates, {}, 64)
    assert flat == ["retained accuracy fell", "forget accuracy of shirt is 0.156 > 0.100"]
    assert fold_reasons(folded, unfolded, gates, {"shirt": (6, 32)}, 64) == ["retained accuracy fell"]  # 18.8%
    folded["forget_acc_each"]["shirt"] = 0.25  # over the cap, whatever the anchor's confusion
    assert fold_reasons(folded, unfolded, gates, {"shirt": (16, 32)}, 64)[1:] == [
        "forget accuracy of shirt is 0.250 > 0.200"
    ]
