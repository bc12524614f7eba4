"""Bad stored files and bad states, on the real pipeline (issue 13's bad-input table, second half): a corrupt or
swapped weight file, a registry tag that no longer matches, pickled weights, a rollback under a running batch,
a queue that disagrees with its registry. Each is refused with a message that names it, and nothing changes."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.slow


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def stored_file(registry, version: str, name: str):
    """The registry store's copy of a version's model file (MLflow's local artefact store)."""
    run_id = registry.version(version).run_id
    (found,) = registry.workspace.mlflow_artifacts.glob(f"**/{run_id}/artifacts/model/artifacts/{name}")
    return found


def production_state(run_cli, capsys) -> tuple:
    """What must not change: the queue and every version's aliases and gate."""
    capsys.readouterr()
    assert run_cli("request", "list", "--json") == 0
    queue = json.loads(capsys.readouterr().out)
    assert run_cli("lineage", "--json") == 0
    versions = [(r["version"], r["status"]) for r in json.loads(capsys.readouterr().out)]
    return queue, versions


@pytest.fixture
def one_step(tiny_pipeline, prefect_harness, capsys):
    """A workspace with the base (v1) and one promoted step (v2)."""
    assert tiny_pipeline("request", "add", "trouser") == 0
    assert tiny_pipeline("run") == 0
    capsys.readouterr()
    return tiny_pipeline


def test_weights_are_checked_against_the_registry_before_use(one_step, capsys, tmp_path):
    from lethe.tasks.stores.integrity import MANIFEST_TAG
    from lethe.tasks.stores.registry import Registry
    from lethe.tasks.workspace import Workspace

    run_cli, settings = one_step, one_step.settings
    ws = Workspace.open(settings)
    registry = Registry(ws, settings.registry)
    reference = tmp_path / "reference.npy"
    assert run_cli("sample", "--concept", "bag", "--out", str(reference)) == 0
    adapter = ws.model_cache / "v2" / "artifacts" / "adapters" / "adapter_stack.safetensors"
    before = adapter.read_bytes()

    # 1. a corrupt copy in the local cache is fetched again from the registry's store, and works
    flip_a_byte(adapter)
    again = tmp_path / "again.npy"
    assert run_cli("sample", "--concept", "bag", "--out", str(again)) == 0
    assert adapter.read_bytes() == before and again.read_bytes() == reference.read_bytes()

    # 2. the stored copy itself tampered with (and no good cache): refused, naming the file
    stored = stored_file(registry, "2", "adapters/adapter_stack.safetensors")
    flip_a_byte(stored)
    shutil.rmtree(ws.model_cache / "v2")
    state = production_state(run_cli, capsys)
    assert run_cli("sample", "--concept", "bag", "--out", str(tmp_path / "no.npy")) == 2
    err = capsys.readouterr().err
    assert "version 2: files differ from the recorded sha256 (changed: adapters/adapter_stack.safetensors)" in err
    assert not (tmp_path / "no.npy").exists() and "Traceback" not in err
    flip_a_byte(stored)  # restored

    # 3. a tampered base: the same, for the generator's own weights
    stored_base = stored_file(registry, "1", "generator/unet/diffusion_pytorch_model.safetensors")
    flip_a_byte(stored_base)
    shutil.rmtree(ws.model_cache / "v1", ignore_errors=True)
    assert run_cli("sample", "--concept", "bag", "--version", "1", "--out", str(tmp_path / "no.npy")) == 2
    assert f"version 1: files differ from the recorded sha256 (changed: generator/unet/{stored_base.name})" in (
        capsys.readouterr().err
    )
    flip_a_byte(stored_base)

    # 4. the registry's tag changed (a version swapped under its number): refused
    registry.client.set_model_version_tag(settings.registry.model_name, "2", MANIFEST_TAG, "0" * 64)
    assert run_cli("sample", "--concept", "bag", "--out", str(tmp_path / "no.npy")) == 2
    assert "version 2: files" in capsys.readouterr().err
    assert production_state(run_cli, capsys) == state


def test_pickled_weights_in_the_generator_folder_are_refused(tiny_pipeline, prefect_harness, capsys, tmp_path):
    folder = tmp_path / "generator"
    shutil.copytree(tiny_pipeline.settings.generator.folder, folder)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    tiny_pipeline.change(generator__folder=str(folder), paths__base=str(folder))
    assert tiny_pipeline("run") == 2
    err = capsys.readouterr().err
    assert "holds pickled weights (unet/diffusion_pytorch_model.bin)" in err and "Traceback" not in err


def test_a_rollback_is_refused_while_a_batch_runs(one_step, capsys):
    from lethe.tasks.stores.batch_lock import file_lock
    from lethe.tasks.workspace import Workspace

    run_cli = one_step
    state = production_state(run_cli, capsys)
    with file_lock(Workspace.open(run_cli.settings).lock):  # a batch holds the workspace
        assert run_cli("rollback", "--to", "1", "--reason", "test") == 3
    assert "refused: a batch is running" in capsys.readouterr().err
    assert production_state(run_cli, capsys) == state
    assert run_cli("rollback", "--to", "1", "--reason", "test") == 0  # and goes through once it has finished


def test_a_queue_that_disagrees_with_the_registry_stops_the_batch(one_step, capsys):
    from lethe.tasks.workspace import Workspace

    run_cli = one_step
    queue_file = Workspace.open(run_cli.settings).queue_db
    queue_file.rename(queue_file.with_suffix(".lost"))  # the queue lost, the registry kept
    assert run_cli("request", "add", "bag") == 0
    state = production_state(run_cli, capsys)
    assert run_cli("run") == 2
    err = capsys.readouterr().err
    assert "the queue and the registry disagree" in err
    assert "version 2 forgets 'trouser' for request 1, but the queue's request 1 is for 'bag'" in err
    assert production_state(run_cli, capsys) == state
