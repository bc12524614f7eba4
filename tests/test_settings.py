"""The settings: one typed model of params.yaml, strict at load, overridable from the environment."""

import inspect

import pytest
import yaml

from lethe.tasks.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from tests.conftest import PARAMS, ROOT


def edited(tmp_path, edit) -> str:
    data = yaml.safe_load(PARAMS.read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_shipped_file_loads_and_its_paths_are_relative_to_it():
    settings = load_settings(PARAMS)
    assert settings.paths.base == ROOT / "artifacts" / "base" and settings.paths.workspace == ROOT / "workspace"
    assert settings.train.steps == 200 and settings.adapter.intensity == 2.0


def test_a_misspelt_key_fails_at_load_with_its_path(tmp_path):
    path = edited(tmp_path, lambda d: d["train"].update(stpes=10))
    with pytest.raises(SettingsError, match=r"train\.stpes: unknown key"):
        load_settings(path)
    path = edited(tmp_path, lambda d: d["train"]["weights"].update(smoth=0.0))
    with pytest.raises(SettingsError, match=r"train\.weights\.smoth: unknown key"):
        load_settings(path)
    path = edited(tmp_path, lambda d: d.update(trian={"steps": 1}))
    with pytest.raises(SettingsError, match=r"trian: unknown key"):
        load_settings(path)


def test_a_missing_key_and_out_of_range_values_are_refused_with_their_paths(tmp_path):
    path = edited(tmp_path, lambda d: d["gates"].pop("kid_max_ratio"))
    with pytest.raises(SettingsError, match=r"gates\.kid_max_ratio: Field required"):
        load_settings(path)
    path = edited(
        tmp_path,
        lambda d: (
            d["gates"].update(forget_acc_max=1.5),
            d["train"].update(steps=0),
            d["adapter"].update(solver="dopri5"),
        ),
    )
    with pytest.raises(SettingsError) as refused:
        load_settings(path)
    message = str(refused.value)
    assert "gates.forget_acc_max" in message and "(got 1.5)" in message
    assert "train.steps" in message and "adapter.solver" in message and "'dopri5'" in message


def test_values_that_only_fail_together_are_refused(tmp_path):
    path = edited(tmp_path, lambda d: d["adapter"].update(k=9))
    with pytest.raises(SettingsError, match="k = 9 exceeds the 4 candidates"):
        load_settings(path)
    path = edited(tmp_path, lambda d: d["base"].update(norm_groups=5))
    with pytest.raises(SettingsError, match="norm_groups 5 must divide"):
        load_settings(path)
    path = edited(tmp_path, lambda d: d["train"]["adversarial"].update(rounds=3))  # the rung would add nothing
    with pytest.raises(SettingsError, match="escalation.adversarial_rounds 3 must exceed train.adversarial.rounds 3"):
        load_settings(path)


def test_environment_overrides_use_one_prefix_and_are_validated_like_the_file():
    settings = load_settings(
        PARAMS,
        {
            f"{ENV_PREFIX}TRAIN__STEPS": "7",
            f"{ENV_PREFIX}TRAIN__WEIGHTS__SMOOTH": "0",
            f"{ENV_PREFIX}STORAGE__MLFLOW_URI": "http://127.0.0.1:5000",
            "HOME": "/x",
        },
    )
    assert settings.train.steps == 7 and settings.train.weights.smooth == 0.0
    assert settings.storage.mlflow_uri == "http://127.0.0.1:5000"
    with pytest.raises(SettingsError, match="LETHE_TRAIN__STEPZ: no key 'train.stepz'"):
        load_settings(PARAMS, {"LETHE_TRAIN__STEPZ": "7"})
    with pytest.raises(SettingsError, match="LETHE_WORKSPACE: expected LETHE_<SECTION>__<KEY>"):
        load_settings(PARAMS, {"LETHE_WORKSPACE": "/tmp/ws"})  # the old variable is refused, not ignored
    with pytest.raises(SettingsError, match="train.steps"):
        load_settings(PARAMS, {"LETHE_TRAIN__STEPS": "-3"})


def test_no_setting_has_a_code_default():
    """Every value comes from the file: a code default could only contradict it."""

    def walk(model: type, prefix: str):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if inspect.isclass(annotation) and issubclass(annotation, Settings.__mro__[1]):
                yield from walk(annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", field.is_required()

    optional = [name for name, required in walk(Settings, "") if not required]
    assert optional == ["demo.requests.anchor"] or optional == []


def test_overrides_return_a_validated_copy():
    settings = load_settings(PARAMS)
    changed = settings.override({"train.steps": 3})
    assert changed.train.steps == 3 and settings.train.steps == 200
    with pytest.raises(SettingsError, match="no key 'train.stepz'"):
        settings.override({"train.stepz": 3})
    with pytest.raises(SettingsError, match="train.steps"):
        settings.override({"train.steps": 0})


def test_a_file_extends_another_and_changes_only_what_it_gives(tmp_path):
    text = load_settings(ROOT / "params.text-to-image.yaml")
    shipped = load_settings(PARAMS)
    assert text.generator.folder == ROOT / "artifacts" / "text_to_image" and text.generator.kind == "text-to-image"
    assert text.sampling.guidance == 4.0 and text.sampling.steps == 10
    assert text.adapter.solver == shipped.adapter.solver and text.base == shipped.base  # inherited
    assert text.train.weights == shipped.train.weights and text.train.steps == 300  # merged key by key
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(SettingsError, match="loops back"):
        load_settings(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text(f"extends: {PARAMS}\ntrain: {{stpes: 3}}\n")
    with pytest.raises(SettingsError, match="train.stpes: unknown key"):
        load_settings(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_settings(tmp_path / "d.yaml")


def test_a_queue_url_with_a_password_is_refused_and_the_password_never_printed():
    settings = load_settings(PARAMS)
    with pytest.raises(SettingsError, match="PGPASSWORD") as caught:
        settings.override({"storage.queue_url": "postgresql://lethe:hunter2@db.internal:5432/lethe"})
    assert "hunter2" not in str(caught.value) and "lethe:***@db.internal" in str(caught.value)
    with pytest.raises(SettingsError, match="s3://BUCKET/PREFIX"):
        settings.override({"storage.inbox": "bucket/inbox"})
    shared = settings.override({"storage.queue_url": "postgresql://lethe@db.internal:5432/lethe"})
    assert shared.storage.queue_url == "postgresql://lethe@db.internal:5432/lethe"


def test_the_server_profile_changes_storage_only_and_holds_no_secret():
    server, shipped = load_settings(ROOT / "params.server.yaml"), load_settings(PARAMS)
    assert server.storage.queue_url.startswith("postgresql://") and server.storage.mlflow_uri.startswith("http")
    assert server.storage.dvc_remote.startswith("s3://") and server.storage.inbox.startswith("s3://")
    assert server.model_dump(exclude={"storage", "paths"}) == shipped.model_dump(exclude={"storage", "paths"})
    text = (ROOT / "params.server.yaml").read_text().lower()
    assert not any(word in text for word in ("password:", "secret_access", "aws_access_key_id:"))
