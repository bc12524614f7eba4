"""The one place that configures the process, called first by every entry point (the CLI, the batch flow
when a Prefect worker starts it): third-party libraries' own environment settings, torch, log levels.

Lethe's state never travels through these variables: they are Prefect's, MLflow's and DVC's documented
switches (telemetry off, where Prefect keeps its local database), set before those libraries read them.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from lethe.tasks.runtime import configure_torch, quiet_libraries
from lethe.tasks.settings import Settings
from lethe.tasks.workspace import Workspace

LIBRARY_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # the first start of the local API on a new workspace migrates its database: 20 s is not enough on 2 cores
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DVC_NO_ANALYTICS": "1",
}


def configure_process(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """Library switches into `environ` (the process environment, passed in by the entry point), where the
    user has not set them; Prefect's local state goes to the workspace unless a server or home is set."""
    for key, value in LIBRARY_DEFAULTS.items():
        environ.setdefault(key, value)
    if "PREFECT_HOME" not in environ and "PREFECT_API_URL" not in environ:
        environ["PREFECT_HOME"] = str(Workspace.open(settings).prefect_home)
    configure_torch(settings.runtime)
    quiet_libraries()
