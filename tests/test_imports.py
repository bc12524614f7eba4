"""Importing any module of Lethe changes nothing in the process: no environment variables, logger levels,
plotting backend or MLflow tracking URI. Only the entry point (flows/process.py) configures the process."""

import json
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import importlib, json, logging, os, pkgutil, sys
# the libraries themselves first, so that their own import-time changes are not counted
import matplotlib, mlflow, mlflow.pyfunc, torch, diffusers, dvc.repo, torch._inductor.config, torchmetrics.image.kid
import transformers, tokenizers, transformers.models.clip
from prefect import flow, task  # prefect configures its loggers on first use
env, levels = dict(os.environ), {}
names = ["dvc", "mlflow", "mlflow.pyfunc", "prefect", "alembic", "lethe"]
levels = {n: logging.getLogger(n).level for n in names}
backend = matplotlib.rcParams._get_backend_or_none()  # None until someone chooses or resolves one
chosen = []
matplotlib.use = lambda *args, **kwargs: chosen.append(args)  # record any module that picks a backend
import lethe.models, lethe.tasks, lethe.flows
modules = []
for package in (lethe.models, lethe.tasks, lethe.flows):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith("serving_model"):
            importlib.import_module(info.name)
        modules.append(info.name)
importlib.import_module("lethe.tasks.stores.serving_model")
print(json.dumps({
    "modules": modules,
    "env": {k: v for k, v in os.environ.items() if env.get(k) != v},
    "levels": {n: logging.getLogger(n).level for n in names if logging.getLogger(n).level != levels[n]},
    "backend": [backend, matplotlib.rcParams._get_backend_or_none()],
    "chosen": chosen,
    "tracking_uri_set": mlflow.tracking._tracking_service.utils._tracking_uri is not None,
    "model_set": mlflow.models.model.__mlflow_model__ is not None,
}))
"""


def test_importing_every_module_has_no_side_effects():
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".pytest_cache")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(found["modules"]) > 30
    assert found["env"] == {} and found["levels"] == {}
    assert found["backend"][0] == found["backend"][1] and found["chosen"] == []
    assert not found["tracking_uri_set"] and not found["model_set"]
