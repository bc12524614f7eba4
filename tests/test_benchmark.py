"""Mechanics of the continual benchmark (not its targets): every part runs on a tiny fixture and writes the
rows a checking script expects."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.continual import main, merge, parse_overrides, wilson
from lethe.models.concepts import CONCEPTS
from tests.conftest import shipped_settings, write_settings

FIELDS = {
    "method",
    "step",
    "concept",
    "forget_acc",
    "retain_acc_in",
    "retain_acc_cross",
    "kid",
    "trainable_params",
    "base_params",
    "step_seconds",
    "sample_seconds",
    "peak_rss_mb",
}
pytestmark = pytest.mark.slow


def test_every_part_runs_and_writes_its_rows(tiny_pipeline, tmp_path, monkeypatch):
    settings = tiny_pipeline.settings
    labels = torch.arange(len(CONCEPTS)).repeat_interleave(4)
    save_file(
        {"images": torch.randint(0, 256, (len(labels), 1, 16, 16), dtype=torch.uint8), "labels": labels},
        settings.paths.prepared / "train.safetensors",
    )
    settings = settings.override({"base.block_channels": [16, 32], "base.steps": 2, "base.batch_size": 8})
    path = write_settings(settings, tmp_path / "bench-params.yaml")
    results = tmp_path / "results"
    common = [
        "--sequence",
        "trouser:dress,digit_3:",
        "--forget-samples",
        "4",
        "--retain-samples",
        "2",
        "--params",
        str(path),
        "--results",
        str(results),
    ]
    assert main(["methods", "--methods", "lethe,dfr-ft,fade-lora,esd", *common]) == 0
    assert main(["retrain", *common]) == 0
    rows = json.loads((results / "continual.json").read_text())
    assert [(r["method"], r["step"]) for r in rows] == [
        (m, s) for m in ("lethe", "dfr-ft", "fade-lora", "esd") for s in (0, 1, 2)
    ] + [("retrain", 0), ("retrain", 2)]
    assert all(FIELDS <= set(r) for r in rows)
    lethe, full, lora = rows[2], rows[5], rows[8]
    assert set(lethe["forget_acc_each"]) == {"trouser", "digit_3"}
    # picked automatically, among retained concepts: neither the concept nor trouser, forgotten at step 1
    assert lethe["anchor"] in CONCEPTS and lethe["anchor"] not in ("digit_3", "trouser")
    assert 0 < lethe["trainable_params"] < 0.05 * lethe["base_params"]  # one small adapter per request
    assert full["trainable_params"] == full["base_params"]  # full fine-tune
    budget = shipped_settings().baselines.fade_lora.budget  # params.yaml sizes fade-lora by Lethe's budget
    assert 0 < lora["trainable_params"] <= budget < 0.1 * lora["base_params"] and lora["targets"]
    assert rows[0]["forget_acc"] is None and rows[0]["retain_acc_in"] == 1.0
    assert lethe["forget_n"] == 4 and len(lethe["forget_ci"]) == 2
    # the checks a degenerate step cannot pass: drawn as its anchor, diversity, the pipeline's gates
    assert set(lethe["drawn_as_anchor_each"]) == {"trouser", "digit_3"}
    assert 0.0 <= lethe["drawn_as_anchor"] <= 1.0 and lethe["diversity_ratio_min"] >= 0.0
    assert isinstance(lethe["collapsed"], bool) and isinstance(lethe["rejected"], bool)
    assert lethe["rejected"] == bool(lethe["gate_reasons"])
    assert main(["sweep", *common]) == 0
    sweep = json.loads((results / "sweep.json").read_text())
    assert [r["intensity"] for r in sweep] == [0.5, 0.75, 1.0, 1.5, 2.0]
    assert main(["ablation", "--variants", "default,no-trajectory,fixed-mid", *common]) == 0
    ablation = json.loads((results / "ablation.json").read_text())
    assert [r["variant"] for r in ablation] == ["default", "no-trajectory", "fixed-mid"]
    assert ablation[2]["targets"] == ["mid_block"]
    assert main(["floors", *common]) == 0
    floors = json.loads((results / "floors.json").read_text())
    assert [(r["concept"], r["anchor"], r["n"]) for r in floors] == [("trouser", "dress", 4)]  # digit_3: automatic
    # the floor is how often the judge calls the anchor's own samples the concept: recount it from the samples
    from lethe.models.generator import Generator
    from lethe.models.judge import Judge
    from lethe.models.sampler import sample

    base, judge = Generator.from_folder(settings.paths.base), Judge.load(settings.paths.judge)
    images, _ = sample(
        base, ["dress"], 4, 777, settings.sampling.steps, None, settings.sampling.guidance, settings.sampling.batch_size
    )
    hits = int((judge.classify(images) == CONCEPTS.index("trouser")).sum())
    assert floors[0]["floor"] == round(hits / 4, 4) and floors[0]["floor_ci"] == wilson(hits, 4)


def test_wilson_interval_brackets_the_proportion():
    lo, hi = wilson(5, 256)
    assert lo < 5 / 256 < hi and hi < 0.05
    lo0, hi0 = wilson(0, 256)
    assert lo0 == 0.0 and math.isclose(hi0, 0.0148, abs_tol=1e-3)  # 0/256 still allows up to ~1.5%


def _part(folder, name, method, seed, requests):
    rows = [{"method": method, "seed": seed, "step": 0, "concept": None, "anchor": None}]
    rows += [
        {"method": method, "seed": seed, "step": i, "concept": c, "anchor": a}
        for i, (c, a) in enumerate(requests, start=1)
    ]
    (folder / name).write_text(json.dumps(rows))


def test_merge_takes_the_first_steps_of_a_longer_run_unless_this_sequence_ran(tmp_path):
    five = [("trouser", "dress"), ("digit_3", "digit_8")]
    ten = five + [("bag", "pullover")]
    _part(tmp_path, "continual-lethe-seed0-aaa.json", "lethe", 0, ten)  # longer run, same start
    _part(tmp_path, "continual-lethe-seed1-bbb.json", "lethe", 1, five)  # this sequence
    _part(tmp_path, "continual-lethe-seed1-aaa.json", "lethe", 1, ten)  # loses to the exact run
    _part(tmp_path, "continual-dfr-ft-seed0-ccc.json", "dfr-ft", 0, [("bag", "pullover")] + five)  # other start
    rows = merge(tmp_path, tmp_path / "out.json", [("trouser", None), ("digit_3", "digit_8")], "bbb")
    assert [(r["method"], r["seed"], r["step"]) for r in rows] == [("lethe", s, i) for s in (0, 1) for i in (0, 1, 2)]
    assert json.loads((tmp_path / "out.json").read_text()) == rows


def test_overrides_change_known_keys_only(tmp_path):
    changes = parse_overrides(["adapter.intensity=2", "train.weights.start=0", "baselines.esd.eta=3"])
    settings = shipped_settings().override(changes)
    assert (settings.adapter.intensity, settings.train.weights.start, settings.baselines.esd.eta) == (2, 0, 3)
    with pytest.raises(SystemExit):
        parse_overrides(["adapter"])
    for bad in ("adapter.intensty=2", "nosection.key=1"):
        with pytest.raises(SystemExit, match="no (key|section)"):
            main(["sweep", "--set", bad, "--results", str(tmp_path)])


def test_the_protocol_tunes_on_validation_then_runs_the_test_with_the_chosen_setting(tiny_pipeline, tmp_path):
    from benchmarks.tune import GRIDS, VALIDATION
    from benchmarks.tune import main as tune

    settings = tiny_pipeline.settings.override({"train.steps": 2, "distill.replay_per_concept": 2})
    path = write_settings(settings, tmp_path / "tune-params.yaml")
    results = tmp_path / "results"
    common = ["--params", str(path), "--results", str(results), "--forget-samples", "2", "--retain-samples", "2"]
    assert tune(["validate", "--methods", "residual", *common]) == 0
    rows = json.loads((results / "tuning.json").read_text())
    tuned = json.loads((results / "tuned.json").read_text())
    for method in ("residual",):
        mine = [r for r in rows if r["tuned_method"] == method]
        assert len({r["method"] for r in mine}) == len(GRIDS[method])  # every configuration ran
        assert [r["concept"] for r in mine if r["step"] > 0][:2] == [
            c for c, _ in (p.split(":") for p in VALIDATION.split(","))
        ]
        assert all(r["anchor"] for r in mine if r["step"] > 0)  # automatic anchors, resolved once
        chosen = {r["method"] for r in mine if r["chosen"]}
        assert chosen == {f"{method}#{tuned[method]['index']}"}
    assert tune(["test", "--methods", "residual", "--requests", "1", *common]) == 0
    test = json.loads((results / "test.json").read_text())
    assert [(r["method"], r["step"], r["concept"]) for r in test] == [("residual", 0, None), ("residual", 1, "trouser")]
    assert test[1]["config"] == tuned["residual"]["config"] and "rejected" in test[1] and "collapsed" in test[1]
    assert test[1]["config"]["adapter.step_size"] == 1.0  # one step: h + s * f(h)
    with pytest.raises(SystemExit, match="no tuned setting"):
        tune(["test", "--methods", "dfr-ft", "--requests", "1", *common])


def test_the_protocol_compares_solver_grids_and_retrains_without_the_forgotten(tiny_pipeline, tmp_path):
    from benchmarks.tune import main as tune

    settings = tiny_pipeline.settings.override(
        {"train.steps": 2, "distill.replay_per_concept": 2, "base.block_channels": [16, 32], "base.steps": 2}
    )
    labels = torch.arange(len(CONCEPTS)).repeat_interleave(2)
    save_file(
        {"images": torch.randint(0, 256, (len(labels), 1, 16, 16), dtype=torch.uint8), "labels": labels},
        settings.paths.prepared / "train.safetensors",
    )
    path = write_settings(settings, tmp_path / "tune-params.yaml")
    results = tmp_path / "results"
    results.mkdir()
    (results / "tuned.json").write_text(json.dumps({"lethe": {"config": {"adapter.intensity": 2.0}}}))
    common = ["--params", str(path), "--results", str(results), "--forget-samples", "2", "--retain-samples", "2"]
    assert tune(["grid", "--methods", "lethe", *common]) == 0
    grid = json.loads((results / "grid.json").read_text())
    steps = math.ceil(settings.adapter.horizon / settings.adapter.step_size)
    assert [(r["sequence"], r["deployment"], r["solver_steps"]) for r in grid] == [
        ("validation", "deployed", settings.adapter.sampling_steps),
        ("validation", "trained grid", steps),
        ("test", "deployed", settings.adapter.sampling_steps),
        ("test", "trained grid", steps),
    ]
    assert [r["concept"] for r in grid] == ["pullover", "pullover", "trouser", "trouser"]
    assert all(r["intensity"] == 2.0 and r["forget_n"] == 2 for r in grid)
    # retrain has no knob to tune: the base recipe from scratch without the forgotten concepts, once per seed
    assert tune(["test", "--methods", "retrain", "--requests", "2", *common]) == 0
    test = json.loads((results / "test.json").read_text())
    assert [(r["method"], r["step"], r["seed"]) for r in test] == [("retrain", 0, 0), ("retrain", 2, 0)]
    assert set(test[1]["forget_acc_each"]) == {"trouser", "digit_3"} and test[1]["retrain_steps"] == 2
    assert test[1]["trainable_params"] == test[1]["base_params"]
