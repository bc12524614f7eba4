"""A text-to-image workspace through the whole pipeline, on a tiny random Stable-Diffusion-layout folder:
the CLI queues a request by concept, the batch distils latent replay by prompt, trains an adapter on the
conditional UNet, evaluates prompts and held-out paraphrases with a plug-in judge, registers the version in
MLflow, promotes it; `lethe sample --prompt`, the pyfunc's prompt column and a rollback work on it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lethe.tasks.model_sources import open_judge
from tests.conftest import Lethe, tiny_pipeline_settings, write_settings
from tests.sd_folder import tiny_sd_folder

pytestmark = pytest.mark.slow
CONCEPTS = {
    "concepts": [
        {"name": "trouser", "prompts": ["a photo of trousers", "a pair of trousers"], "held_out": ["a pair of pants"]},
        {"name": "dress", "prompts": ["a dress"], "held_out": ["a summer dress"]},
        {"name": "bag", "prompts": ["a leather bag"]},
        {"name": "digit_3", "prompts": ["the digit 3"], "held_out": ["a handwritten three"]},
    ]
}


@pytest.fixture
def text_pipeline(tmp_path, tiny_generator_dir) -> Lethe:
    folder = tiny_sd_folder(tmp_path)
    (tmp_path / "my-concepts.yaml").write_text(yaml.safe_dump(CONCEPTS))
    settings = tiny_pipeline_settings(tmp_path, tiny_generator_dir).override(
        {
            "generator.folder": str(folder),
            "generator.kind": "text-to-image",
            "generator.concepts": str(tmp_path / "my-concepts.yaml"),
            "generator.judge": "tests.plugin_judge:tiny_judge",
            "gates.held_out_forget_acc_max": 1.0,
            "sampling.steps": 3,
            "sampling.guidance": 2.0,
            "adapter.placement": "saliency",
            "adapter.candidates": ["mid_block", "up_blocks.0", "up_blocks.1"],
        }
    )
    return Lethe(write_settings(settings, tmp_path / "params.yaml"))


def test_a_text_to_image_request_end_to_end(text_pipeline, prefect_harness, capsys, tmp_path):
    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.workspace import Workspace

    run_cli, settings = text_pipeline, text_pipeline.settings
    assert run_cli("concepts") == 0
    assert capsys.readouterr().out.split()[::3] == ["trouser", "dress", "bag", "digit_3"]  # the user's concept file
    assert run_cli("request", "add", "coat") == 2
    assert "unknown concept" in capsys.readouterr().err
    assert run_cli("request", "add", "trouser", "--anchor", "dress") == 0
    assert run_cli("run") == 0
    out = capsys.readouterr().out
    assert "processed 1 request(s): 1 promoted" in out and "on held-out paraphrases" in out

    registry = Registry(Workspace.open(settings), settings.registry)
    base, step = registry.versions()
    assert base.tags["generator_kind"] == step.tags["generator_kind"] == "text-to-image"
    assert str(registry.production().version) == "2" and step.tags["forgotten"] == "trouser"
    assert len(step.tags["adapter_targets"].split(",")) == 1  # chosen by saliency among the candidates
    run = registry.client.get_run(step.run_id)
    held = {k for k in run.data.metrics if k.startswith("held_out_acc.")}
    assert held == {"held_out_acc.trouser", "held_out_acc.dress", "held_out_acc.digit_3"}  # bag has none
    assert "held_out_forget_acc_max" in run.data.metrics and "before.held_out_acc" in run.data.metrics

    # the replay sets hold latents and the prompts they were drawn with (never a held-out paraphrase)
    from safetensors.torch import load_file

    ws = Workspace.open(settings)
    forget = load_file(ws.absolute(step.tags["forget_path"]))
    prompts = json.loads(bytes(forget["prompts_json_utf8"].tolist()).decode())
    assert forget["latents"].shape[1:] == (4, 8, 8) and set(prompts) == set(CONCEPTS["concepts"][0]["prompts"])
    retain = load_file(ws.absolute(step.tags["retain_path"]))
    retained = json.loads(bytes(retain["prompts_json_utf8"].tolist()).decode())
    assert "a summer dress" not in retained and "a dress" in retained

    # a version loads back with its prompt sets; sampling by prompt and by concept from the CLI
    generator, stack = registry.load("2")
    assert generator.concepts == ["trouser", "dress", "bag", "digit_3"] and stack.names == ["request-1"]
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for path in (a, b):
        assert run_cli("sample", "--prompt", "a pair of pants", "--n", "2", "--seed", "4", "--out", str(path)) == 0
    assert np.array_equal(np.load(a), np.load(b)) and np.load(a).shape == (2, 1, 16, 16)
    s = settings.sampling
    expected = generator.sample(["a pair of pants"], 2, 4, s.steps, s.guidance, stack, s.batch_size)
    assert np.array_equal(np.load(a), expected.numpy())
    assert run_cli("sample", "--concept", "trouser", "--n", "3", "--out", str(tmp_path / "c.png")) == 0

    # the pyfunc takes a prompt column and answers as the generator samples
    model = registry.pyfunc("2")
    answer = model.predict(pd.DataFrame({"prompt": ["a pair of pants"], "n": [2], "seed": [4]}))
    assert np.array_equal(answer, expected.numpy())

    # rolling back restores the base, verified against its registration fingerprint
    capsys.readouterr()
    assert run_cli("rollback", "--reason", "test", "--by", "tester") == 0
    assert "production samples match" in capsys.readouterr().out
    assert str(registry.production().version) == "1"


def test_a_plug_in_judge_is_checked_when_opened(tmp_path):
    judge = open_judge("tests.plugin_judge:tiny_judge", tmp_path)
    assert judge.concepts == ["trouser", "dress", "bag", "digit_3"] and judge.num_features == 4
    assert judge.classify(torch.zeros(3, 1, 16, 16)).shape == (3,)
    with pytest.raises(ValueError, match="logits of shape"):
        open_judge("tests.plugin_judge:wrong_output", tmp_path).classify(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="cannot be imported"):
        open_judge("tests.no_such_module:judge", tmp_path)
    with pytest.raises(ValueError, match="neither a judge folder"):
        open_judge(str(tmp_path / "missing"), tmp_path)


def test_the_text_benchmark_runs_the_sequence_and_measures_paraphrases_apart(text_pipeline, tmp_path):
    from benchmarks.continual import main

    settings = text_pipeline.settings.override({"train.steps": 3, "distill.replay_per_concept": 2})
    path = write_settings(settings, tmp_path / "bench-params.yaml")
    results = tmp_path / "results"
    common = ["--params", str(path), "--results", str(results), "--forget-samples", "2", "--retain-samples", "2"]
    assert main(["methods", "--sequence", "trouser:dress,digit_3:", *common]) == 0
    rows = json.loads((results / "continual-text.json").read_text())
    assert [(r["method"], r["step"]) for r in rows] == [(m, s) for m in ("lethe", "dfr-ft") for s in (0, 1, 2)]
    lethe = rows[2]
    assert lethe["anchor"] in ("dress", "bag") and set(lethe["forget_acc_each"]) == {"trouser", "digit_3"}
    assert set(lethe["held_out_acc_each"]) == {"trouser", "digit_3"}  # both have paraphrases
    assert lethe["floor_each"].keys() == {"trouser"} and lethe["drawn_as_anchor_each"].keys() == {"trouser", "digit_3"}
    assert 0 < lethe["trainable_params"] < lethe["unet_params"] and lethe["stack_params"] >= lethe["trainable_params"]
    assert rows[5]["trainable_params"] == rows[5]["unet_params"]  # dfr-ft: the whole UNet
    with pytest.raises(SystemExit, match="no text-to-image trainer"):
        main(["methods", "--methods", "esd", *common])


def test_the_text_tuning_rule():
    from benchmarks.continual_text import choose

    def run(forget, held, retain):
        return ({}, [{"forget_acc": forget, "held_out_forget_acc": held, "retain_acc": retain}])

    # meets the targets -> the best retention among those; a better-retaining miss is not chosen
    assert choose([run(0.04, 0.08, 0.98), run(0.01, 0.02, 0.99), run(0.30, 0.30, 1.0)]) == 1
    # none meets them -> lowest worst forget among those that keep >= 95%, never a collapse
    assert choose([run(0.20, 0.10, 0.96), run(0.0, 0.0, 0.40), run(0.10, 0.15, 0.95)]) == 2
    assert choose([run(0.0, 0.0, 0.40), run(0.5, 0.5, 0.90)]) == 1  # nothing retains: the highest retention


def test_a_request_can_give_its_own_prompts(text_pipeline, prefect_harness, capsys):
    from safetensors.torch import load_file

    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.workspace import Workspace

    run_cli, settings = text_pipeline, text_pipeline.settings
    # a held-out paraphrase is for evaluation only: a request that trains on it fails, nothing is promoted
    args = ["request", "add", "trouser", "--anchor", "dress", "--prompt", "jeans", "--prompt", "denim trousers"]
    assert run_cli(*args, "--anchor-prompt", "a plain dress") == 0
    assert run_cli("run") == 0
    assert "processed 1 request(s): 1 promoted" in capsys.readouterr().out
    registry = Registry(Workspace.open(settings), settings.registry)
    step = registry.version("2")
    assert json.loads(step.tags["request_prompts"]) == ["jeans", "denim trousers"]
    assert json.loads(step.tags["request_anchor_prompts"]) == ["a plain dress"]
    forget = load_file(Workspace.open(settings).absolute(step.tags["forget_path"]))
    assert set(json.loads(bytes(forget["prompts_json_utf8"].tolist()).decode())) == {"jeans", "denim trousers"}
    run = registry.client.get_run(step.run_id)
    assert "acc.trouser" in run.data.metrics and "held_out_acc.trouser" in run.data.metrics  # judged as before

    assert run_cli("request", "add", "digit_3", "--prompt", "a handwritten three") == 0
    assert run_cli("run") == 0
    out = capsys.readouterr().out
    assert "failed" in out and "held-out paraphrases are kept for evaluation" in out
    assert str(registry.production().version) == "2"
    assert run_cli("request", "add", "bag", "--prompt", "two\nlines") == 2
    assert "one line" in capsys.readouterr().err
