"""The house's layering rule, checked inside the repo on every run (nothing to skip on a fresh clone):
imports point one way, flows -> tasks -> models, and models/ stays pure PyTorch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what each layer must not import (top-level names, and lethe's own layers by their full names)
FORBIDDEN = {
    "models": {
        "lethe.tasks",
        "lethe.flows",
        "prefect",
        "mlflow",
        "dvc",
        "boto3",
        "botocore",
        "sqlalchemy",
        "psycopg",
        "psycopg2",
        "sqlite3",
    },
    "tasks": {"lethe.flows"},
    "flows": set(),
}
OLD_NAMES = {"models", "tasks", "flows"}  # the folders are installed as lethe.models, lethe.tasks, lethe.flows


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`; relative imports resolved against its package."""
    package = ["lethe", *path.relative_to(ROOT).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def violations(root: Path = ROOT) -> list[str]:
    broken = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((root / layer).rglob("*.py")):
            for line, name in imports_of(path):
                top = name.split(".")[0]
                bad = {f for f in forbidden if name == f or name.startswith(f + ".")} or (
                    {top} if top in OLD_NAMES else set()
                )
                if bad:
                    broken.append(f"{path.relative_to(root)}:{line}: {layer}/ must not import {name}")
    return broken


def test_imports_point_one_way():
    assert sum(1 for layer in FORBIDDEN for _ in (ROOT / layer).rglob("*.py")) > 30  # the check saw the house
    assert violations() == []


def test_the_check_catches_a_wrong_way_import(tmp_path, monkeypatch):
    for layer in FORBIDDEN:
        (tmp_path / layer).mkdir()
    (tmp_path / "models" / "bad.py").write_text("import mlflow\nfrom lethe.tasks.settings import Settings\n")
    (tmp_path / "tasks" / "bad.py").write_text("from ..flows import cli\nfrom models import generator\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations(tmp_path)
    assert len(found) == 4, found
    assert any("models/bad.py:1" in f and "mlflow" in f for f in found)
    assert any("tasks/bad.py:1" in f and "lethe.flows" in f for f in found)


def test_models_run_without_orchestration_libraries():
    # boto3 may arrive only through diffusers' optional accelerate (its SageMaker config imports boto3 when it is
    # installed, as it is beside peft for the fade-lora baseline); nothing of models/ may pull it in.
    modules = sorted(p.stem for p in (ROOT / "models").glob("*.py") if p.stem != "__init__")
    code = (
        f"import sys; import {', '.join('lethe.models.' + m for m in modules)}; "
        "loaded = set(m.split('.')[0] for m in sys.modules); "
        "bad = {'prefect', 'mlflow', 'dvc', 'sqlalchemy', 'psycopg'} & loaded; assert not bad, bad; "
        "assert not any(m.startswith(('lethe.tasks', 'lethe.flows')) for m in sys.modules); "
        "assert 'boto3' not in loaded or 'accelerate.commands.config.sagemaker' in sys.modules, 'boto3'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
