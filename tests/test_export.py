"""`lethe export --format diffusers` and `lethe verify-export`: a version as a folder that diffusers loads in a
process where Lethe cannot be imported, sampling Lethe's own bits, carrying its provenance, and caught when a
file changes or the adapters are dropped."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from lethe.models.adapter_stack import AdapterStack
from lethe.models.generator import Generator
from lethe.models.judge import Judge
from lethe.models.ode_adapter import ODEAdapter
from lethe.models.text_generator import prompt_seed
from lethe.tasks.operations.export_version import MANIFEST_NAME, write_pipeline
from lethe.tasks.steps.distill import distill
from lethe.tasks.steps.train_adapter import train_adapter
from lethe.tasks.stores.integrity import file_sha256
from lethe.tasks.stores.registry import Registry
from lethe.tasks.workspace import Workspace
from tests.conftest import Lethe, ode_config, shipped_settings, small_settings, tiny_pipeline_settings, write_settings
from tests.sd_folder import tiny_sd_folder, tiny_text_to_image
from tests.servers import server_process
from tests.test_text_pipeline import CONCEPTS as TEXT_CONCEPTS  # the same four prompt sets

pytestmark = pytest.mark.slow
BASE, JUDGE = shipped_settings().paths.base, shipped_settings().paths.judge

# Runs in a fresh interpreter in which `import lethe` fails: what a serving stack without Lethe sees.
LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["lethe"] = None
    import torch
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    out, asks = sys.argv[1], json.loads(sys.argv[2])
    images = {}
    for i, ask in enumerate(asks):  # each ask loads its pipeline afresh
        pipe = DiffusionPipeline.from_pretrained(ask["folder"], trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        if ask.get("lora"):
            pipe.load_lora_weights(ask["lora"], weight_name=ask.get("weight_name", "pytorch_lora_weights.safetensors"))
        if ask.get("resave"):
            pipe.save_pretrained(ask["resave"])
        common = dict(num_inference_steps=ask["steps"], guidance_scale=ask["guidance"])
        if "prompt" in ask:
            stream = torch.Generator().manual_seed(ask["noise_seed"])
            drawn = pipe(ask["prompt"], num_images_per_prompt=ask["n"], generator=stream, output_type="pt", **common)
        else:
            drawn = pipe([ask["concept"]], num_images_per_concept=ask["n"], seed=ask["seed"],
                         batch_size=ask["batch_size"], output_type="raw", **common)
        images[str(i)] = drawn.images.contiguous()
        print("LOADED", type(pipe).__name__, type(pipe.unet).__name__)
    save_file(images, out)
    """
)


def load_without_lethe(folder: Path, tmp_path: Path, **ask) -> tuple[torch.Tensor, str]:
    """Images of `folder` sampled as `ask` says, and the pipeline's and UNet's class names, in a process
    where `import lethe` fails."""
    (images, loaded), *_ = load_many_without_lethe(tmp_path, dict(ask, folder=folder))
    return images, loaded


def load_many_without_lethe(tmp_path: Path, *asks: dict) -> list[tuple[torch.Tensor, str]]:
    """Several loads (each ask names its `folder`) in one such process: one interpreter start for all."""
    out = tmp_path / f"images-{len(list(tmp_path.glob('images-*')))}.safetensors"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    asks_json = json.dumps([{k: str(v) if isinstance(v, Path) else v for k, v in a.items()} for a in asks])
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(out), asks_json], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = [line.removeprefix("LOADED ") for line in done.stdout.splitlines() if line.startswith("LOADED ")]
    images = load_file(out)
    return [(images[str(i)], names[i]) for i in range(len(asks))]


def test_a_text_to_image_export_samples_lethes_bits_where_lethe_is_not_installed(tmp_path):
    generator = tiny_text_to_image(tmp_path)
    stack = AdapterStack()
    for name, target, intensity in (("request-1", "up_blocks.1", 1.5), ("request-2", "up_blocks.1", 0.7)):
        field = ODEAdapter(generator.feature_channels(target), ode_config())
        torch.nn.init.normal_(field.field.outer.weight, std=0.3)
        stack.add(name, {target: field}, intensity=intensity)
    stack.add("request-3", {"mid_block": ODEAdapter(generator.feature_channels("mid_block"), ode_config())})
    stack.disable("request-3")
    folder = write_pipeline(generator, stack, tmp_path / "export")

    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["exported_unet", "LetheUNet2DConditionModel"]
    assert {"exported_unet.py", "ode_adapter.py"} <= {p.name for p in (folder / "unet").iterdir()}
    config = json.loads((folder / "unet" / "config.json").read_text())
    assert [a["name"] for a in config["lethe_adapters"]] == ["request-1", "request-2", "request-3"]
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", framework="pt") as f:
        assert any(k.startswith("lethe_stack.request-2.") for k in f.keys())

    prompt, seed, n, steps, guidance = "a pair of pants", 4, 3, 4, 2.0
    expected = (generator.sample([prompt], n, seed, steps, guidance, stack) * 0.5 + 0.5).clamp(0, 1)
    ask = dict(prompt=prompt, n=n, steps=steps, guidance=guidance, noise_seed=prompt_seed(seed, prompt))
    images, loaded = load_without_lethe(folder, tmp_path, **ask, resave=str(tmp_path / "resaved"))
    assert loaded == "StableDiffusionPipeline LetheUNet2DConditionModel"
    assert torch.equal(images, expected)
    # saved again by diffusers from the loaded pipeline, the folder still names and carries its code
    again, _ = load_without_lethe(tmp_path / "resaved", tmp_path, **ask)
    assert torch.equal(again, expected)
    # the card's warning: the plain class ignores the adapters and serves the base
    base = (generator.sample([prompt], n, seed, steps, guidance, None) * 0.5 + 0.5).clamp(0, 1)
    assert not torch.equal(base, expected)


@pytest.fixture(scope="module")
def forgetting_version(tmp_path_factory):
    """A real registry with the shipped base (version 1) and one step that forgets trouser (version 2)."""
    if not (BASE / "lethe.json").is_file():
        pytest.skip("no trained base: run `dvc repro`")
    root = tmp_path_factory.mktemp("export-registry")
    s = small_settings(
        paths__workspace=str(root / "ws"),
        sampling__steps=8,
        distill__replay_per_concept=8,
        train__steps=150,
        train__batch_size=32,
        train__pool_rows=512,
        adapter__targets=["mid_block", "up_blocks.0"],
    )
    generator, judge = Generator.from_folder(BASE), Judge.load(JUDGE)
    replay = distill(generator, AdapterStack(), judge, "trouser", "dress", [], s.distill, s.sampling)
    trained = train_adapter(
        generator,
        AdapterStack(),
        replay.forget_images,
        replay.retain_images,
        replay.retain_labels,
        "trouser",
        "dress",
        s.adapter,
        s.train,
        "request-1",
    )
    registry = Registry(Workspace.open(s), s.registry)
    common = dict(sampling=s.sampling.model_dump(), settings={}, metrics={}, description="", files={})
    base = registry.register(
        key="base",
        generator=generator,
        adapters=AdapterStack(),
        run_name="base",
        tags={"kind": "base", "gate": "passed", "forgotten": "", "parent_version": "", "request_id": ""},
        **common,
    )
    step = registry.register(
        key="request-1-attempt-1",
        generator=generator,
        adapters=trained.stack,
        run_name="request-1",
        tags={
            "kind": "unlearning-step",
            "request_id": 1,
            "concept": "trouser",
            "anchor": "dress",
            "parent_version": base,
            "forgotten": "trouser",
            "gate": "passed",
            "metric.forget_acc_max": "0.0100",
        },
        **common,
    )
    registry.promote(step)
    rejected = {"gate": "failed", "gate_reasons": "forget accuracy digit_3 0.40 > 0.10", "parent_version": step}
    registry.register(
        key="request-2-attempt-1",
        generator=generator,
        adapters=trained.stack,
        run_name="request-2",
        tags={"kind": "unlearning-step", "request_id": 2, "concept": "digit_3", "forgotten": "trouser,digit_3"}
        | rejected,
        **common,
    )
    cli = Lethe(write_settings(s, root / "params.yaml"))
    return cli, registry, generator, trained.stack, s


def test_a_class_conditional_version_exports_exactly_with_its_provenance(forgetting_version, tmp_path, capsys):
    cli, registry, generator, stack, s = forgetting_version
    out = tmp_path / "v2"
    assert cli("export", "production", str(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert not list(tmp_path.glob(".v2.partial-*"))

    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["class_pipeline", "LetheClassPipeline"] and index["concepts"] == generator.concepts
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["version"] == "2" and manifest["base"]["version"] == "1"
    assert manifest["requests"] == [1] and manifest["forgotten"] == ["trouser"]
    assert [step["version"] for step in manifest["lineage"]] == ["2", "1"]
    assert manifest["base"]["weights_sha256"] == registry.version("1").tags["weights_sha256"]
    listed = manifest["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in listed and "README.md" in listed
    assert all(file_sha256(out / name) == sha for name, sha in listed.items())
    card = (out / "README.md").read_text()
    assert "trouser" in card and "un-forgotten base" in card and "library_name: diffusers" in card
    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", framework="pt") as f:
        meta = f.metadata()
    assert meta["lethe.forgotten"] == "trouser" and meta["lethe.requests"] == "1"
    assert meta["modelspec.implementation"] == "diffusers"

    sp = s.sampling
    expected, _ = generator.sample_concepts(["trouser"], 8, 3, sp.steps, stack, sp.guidance, sp.batch_size)
    ask = dict(concept="trouser", n=8, seed=3, steps=sp.steps, guidance=sp.guidance, batch_size=sp.batch_size)
    images, loaded = load_without_lethe(out, tmp_path, **ask, resave=str(tmp_path / "resaved"))
    assert loaded == "LetheClassPipeline LetheUNet2DModel"
    assert torch.equal(images, expected)
    assert torch.equal(load_without_lethe(tmp_path / "resaved", tmp_path, **ask)[0], expected)

    assert cli("verify-export", str(out)) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["passed"] and checked["forget_acc"]["trouser"] <= s.gates.forget_acc_max


def test_verify_export_catches_a_changed_file_and_a_dropped_adapter(forgetting_version, tmp_path, capsys):
    cli, *_ = forgetting_version
    out = tmp_path / "v2"
    assert cli("export", "2", str(out)) == 0
    capsys.readouterr()

    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    weights = changed / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert cli("verify-export", str(changed)) == 2
    assert "unet/diffusion_pytorch_model.safetensors: sha256 differs" in capsys.readouterr().err

    # the card's warning made real: the UNet loaded as the plain diffusers class, manifest made consistent
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    index = json.loads((plain / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DModel"]
    (plain / "model_index.json").write_text(json.dumps(index))
    manifest = json.loads((plain / MANIFEST_NAME).read_text())
    manifest["files"]["model_index.json"] = file_sha256(plain / "model_index.json")
    (plain / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert cli("verify-export", str(plain)) == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["forget_acc"]["trouser"] > 0.5 and "trouser" in result["reasons"][0]
    assert "fails its forget check" in captured.err


def test_export_refuses_bad_input_and_writes_nothing(forgetting_version, tmp_path, capsys):
    cli, *_ = forgetting_version
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert cli("export", "2", str(taken)) == 2
    assert "already exists" in capsys.readouterr().err and [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert cli("export", "2", str(tmp_path / "lora"), "--format", "lora") == 2
    assert "is class-conditional: --format lora distils into a LoRA" in capsys.readouterr().err
    assert cli("export", "2", str(tmp_path / "kohya"), "--kohya") == 2
    assert "--kohya goes with --format lora" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli("export", "2", str(tmp_path / "odd"), "--format", "onnx")
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
    assert cli("export", "3", str(tmp_path / "rejected")) == 2
    assert "failed its gates (forget accuracy digit_3 0.40 > 0.10)" in capsys.readouterr().err
    assert cli("export", "99", str(tmp_path / "missing")) == 2
    assert "no version '99'" in capsys.readouterr().err
    assert cli("verify-export", str(tmp_path / "taken")) == 2
    assert "not a Lethe export" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_mlflow_serves_the_production_version_over_rest(forgetting_version, tmp_path):
    """`mlflow models serve -m models:/<name>@production` answers a concept with the version's own images."""
    cli, registry, generator, stack, s = forgetting_version
    uri = Workspace.open(s).mlflow_uri
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "models", "serve", "-m", f"models:/{registry.model_name}@production"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", "{port}"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # its uvicorn, as an activated venv
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    body = {"dataframe_split": {"columns": ["concept", "n", "seed"], "data": [["trouser", 2, 3], ["dress", 1, 0]]}}
    with server_process(command, "http://127.0.0.1:{port}/ping", tmp_path / "serve", env) as url:
        request = urllib.request.Request(
            f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            images = torch.tensor(json.loads(answer.read())["predictions"], dtype=torch.float32)
        bad = urllib.request.Request(
            f"{url}/invocations",
            json.dumps({"dataframe_split": {"columns": ["prompt"], "data": [["x"]]}}).encode(),
            {"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=60)
        assert refused.value.code == 400
    sp = s.sampling
    trouser = generator.sample_requests(["trouser"], 2, 3, sp.steps, stack, sp.guidance, sp.batch_size)
    dress = generator.sample_requests(["dress"], 1, 0, sp.steps, stack, sp.guidance, sp.batch_size)
    assert torch.equal(images, torch.cat([trouser, dress]))


@pytest.fixture(scope="module")
def text_version(tmp_path_factory, tiny_generator_dir, prefect_harness):
    """A tiny text-to-image workspace (tests/test_text_pipeline.py's) with one promoted request, trouser."""
    root = tmp_path_factory.mktemp("export-text")
    folder = tiny_sd_folder(root)
    (root / "concepts.yaml").write_text(yaml.safe_dump(TEXT_CONCEPTS))
    settings = tiny_pipeline_settings(root, tiny_generator_dir).override(
        {
            "generator.folder": str(folder),
            "generator.kind": "text-to-image",
            "generator.concepts": str(root / "concepts.yaml"),
            "generator.judge": "tests.plugin_judge:tiny_judge",
            "gates.held_out_forget_acc_max": 1.0,
            "sampling.steps": 3,
            "sampling.guidance": 2.0,
            "adapter.placement": "fixed",
            "adapter.targets": ["mid_block", "up_blocks.1"],
            "export.replay_per_concept": 2,
            "export.rows": 96,
            "export.steps": 60,
            "export.batch_size": 16,
            "export.lr": 0.01,
            "export.lora_dtype": "float16",  # stored in half precision, loaded onto the float32 base
        }
    )
    cli = Lethe(write_settings(settings, root / "params.yaml"))
    assert cli("request", "add", "trouser", "--anchor", "dress") == 0
    assert cli("run") == 0
    return cli, folder


def test_a_distilled_lora_and_merged_export_load_without_lethe_or_custom_code(text_version, tmp_path, capsys):
    cli, base = text_version
    capsys.readouterr()
    assert cli("export", "production", str(tmp_path / "lora"), "--format", "lora", "--log-mlflow") == 0
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads("\n".join(printed[:-2]))
    assert printed[-1] == str(tmp_path / "lora")
    assert printed[-2] == "logged with MLflow's diffusers flavour: models:/lethe-generator-lora/1"
    assert result["passed"] and result["format"] == "lora" and result["lora_params"] > 0
    lora = tmp_path / "lora"
    assert sorted(p.name for p in lora.iterdir()) == [
        "README.md",
        "lethe_export.json",
        "pytorch_lora_weights.safetensors",
    ]
    weights = load_file(lora / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") and ".lora_" in k for k in weights)
    assert {w.dtype for w in weights.values()} == {torch.float16}
    assert {k.split(".")[1] for k in weights} <= {"mid_block", "up_blocks"}  # the adapters' sites only
    manifest = json.loads((lora / MANIFEST_NAME).read_text())
    assert manifest["evaluation"]["passed"] and manifest["weight_name"] == "pytorch_lora_weights.safetensors"
    card = (lora / "README.md").read_text()
    assert "Measured on this artefact" in card and "load_lora_weights" in card
    with safe_open(lora / "pytorch_lora_weights.safetensors", framework="pt") as f:
        assert f.metadata()["lethe.forgotten"] == "trouser"
    # the base's UNet tensors hash as the manifest says the LoRA's base must
    from diffusers import UNet2DConditionModel

    from lethe.tasks.operations.export_version import state_sha256

    assert state_sha256(UNet2DConditionModel.from_pretrained(base / "unet")) == manifest["base"]["unet_state_sha256"]

    # MLflow's own diffusers flavour serves it: the base loaded by diffusers, the LoRA onto it, no Lethe code
    import mlflow
    import pandas as pd
    from PIL import Image

    registry = Registry(Workspace.open(cli.settings), cli.settings.registry)
    logged = registry.client.get_model_version("lethe-generator-lora", "1")
    assert logged.tags["source_version"] == manifest["version"] and logged.tags["forgotten"] == "trouser"
    local = registry.client.download_artifacts(logged.run_id, "model", str(tmp_path / "mlflow-lora"))
    assert "lethe" not in (Path(local) / "requirements.txt").read_text()
    from lethe.tasks.operations.log_lora import log_lora

    assert log_lora(registry, lora, base) == "models:/lethe-generator-lora/1"  # the same weights: logged once
    served = mlflow.pyfunc.load_model(local).predict(
        pd.DataFrame({"prompt": ["a photo of trousers"]}),
        params={"num_inference_steps": 3, "guidance_scale": 2.0, "height": 16, "width": 16},
    )
    assert Image.open(io.BytesIO(served[0])).size == (16, 16)
    assert cli("export", "production", str(tmp_path / "no"), "--format", "merged", "--log-mlflow") == 2

    assert cli("export", "production", str(tmp_path / "kohya"), "--format", "lora", "--kohya") == 0
    kohya = load_file(tmp_path / "kohya" / "lora_kohya.safetensors")
    assert all(k.startswith("lora_unet_") for k in kohya) and any(k.endswith(".lora_down.weight") for k in kohya)
    assert len([k for k in kohya if k.endswith(".lora_down.weight")]) * 2 == len(weights)

    assert cli("export", "production", str(tmp_path / "merged"), "--format", "merged") == 0
    merged = tmp_path / "merged"
    assert not list(merged.rglob("*.py"))  # no custom code anywhere
    assert json.loads((merged / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
    # a Lethe-free process loads both: the LoRA onto the base, the merged folder as it is; they agree
    ask = dict(prompt="a photo of trousers", n=2, steps=3, guidance=2.0, noise_seed=7)
    kohya_ask = dict(ask, folder=base, lora=tmp_path / "kohya", weight_name="lora_kohya.safetensors")
    (merged_images, loaded), (lora_images, _), (base_images, _), (kohya_images, _) = load_many_without_lethe(
        tmp_path, dict(ask, folder=merged), dict(ask, folder=base, lora=lora), dict(ask, folder=base), kohya_ask
    )
    assert loaded == "StableDiffusionPipeline UNet2DConditionModel"
    assert (merged_images - lora_images).abs().max() < 1e-3  # fused = loaded, up to float rounding
    assert not torch.equal(lora_images, base_images)
    # verify-export: the LoRA on its own base passes; on another base it is refused before any sampling
    capsys.readouterr()
    assert cli("verify-export", str(lora), "--base", str(base)) == 0
    assert json.loads(capsys.readouterr().out)["passed"]
    assert cli("verify-export", str(lora)) == 2
    assert "--base FOLDER" in capsys.readouterr().err
    assert cli("verify-export", str(lora), "--base", str(merged)) == 2
    assert "is not the base this LoRA was fitted to" in capsys.readouterr().err
    assert cli("verify-export", str(merged)) == 0
    assert (kohya_images - lora_images).abs().max() < 1e-3  # the same fit, in kohya's keys, loads alike


def test_a_distilled_export_that_fails_the_gates_is_refused_with_its_numbers(text_version, tmp_path, capsys):
    cli, _ = text_version
    cli.change(gates__retain_ratio_min=50.0)  # no artefact can keep 50x the version's retained accuracy
    try:
        capsys.readouterr()
        assert cli("export", "production", str(tmp_path / "merged"), "--format", "merged") == 1
        captured = capsys.readouterr()
        assert "retained accuracy fell" in captured.err and "Nothing was written" in captured.err
        assert "forget accuracy, held-out paraphrases (max)" in json.loads(captured.out)["table"]
        assert list(tmp_path.iterdir()) == []
    finally:
        cli.change(gates__retain_ratio_min=0.0)
