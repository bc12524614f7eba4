"""Real servers on loopback for the server-profile tests: PostgreSQL (the Debian server binaries) and moto's S3
server (a real HTTP endpoint). Each starts on a free port in a temporary folder and stops with the fixture."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

POSTGRES_BIN = Path("/usr/lib/postgresql")  # Debian: one VERSION/bin folder per installed server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl: Debian's (/usr/lib/postgresql/VERSION/bin, the newest), or PATH's."""
    debian = sorted(POSTGRES_BIN.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@contextmanager
def postgres_server(folder: Path, user: str = "lethe"):
    """A PostgreSQL server on a free loopback port, trusting local connections; yields its base URL
    (postgresql://USER@127.0.0.1:PORT). As root the server runs as the `postgres` user (it refuses root)."""
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    data, port = folder / "pgdata", free_port()
    data.mkdir(parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", user)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start")
    try:
        yield f"postgresql://{user}@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])


def create_database(base_url: str, name: str) -> str:
    """A new empty database on the server; returns its URL."""
    import psycopg

    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"


@contextmanager
def s3_server():
    """moto's S3 server on a free loopback port; yields its endpoint URL (credentials test/test, us-east-1)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        yield endpoint
    finally:
        server.stop()


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the server's log when it dies or the time runs out."""
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def server_process(command: list[str], health: str, folder: Path, env: dict[str, str], port: int | None = None):
    """A server subprocess logging to FOLDER/server.log, ready when `health` (with {port}) answers; yields
    its base URL http://127.0.0.1:PORT (a free port, or `port` to bring a stopped server back where it was).
    Stopped (then killed) with the context."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [part.format(port=port) for part in command], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder
        )
    try:
        wait_for(health.format(port=port), process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def mlflow_server(backend: str, artifacts: str, folder: Path, env: dict[str, str], port: int | None = None):
    """`mlflow server` (job execution off): a backend store (PostgreSQL, or SQLite), artefacts proxied to
    `artifacts`."""
    import sys

    mlflow = str(Path(sys.executable).with_name("mlflow"))
    env = env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [mlflow, "server", "--backend-store-uri", backend, "--artifacts-destination", artifacts]
    command += ["--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    return server_process(command, "http://127.0.0.1:{port}/health", folder, env, port)


def prefect_server(folder: Path, env: dict[str, str]):
    """`prefect server start` on loopback, its database under `folder`."""
    import sys

    prefect = str(Path(sys.executable).with_name("prefect"))
    env = env | {"PREFECT_HOME": str(folder / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", "{port}", "--no-ui", "--analytics-off"]
    return server_process(command, "http://127.0.0.1:{port}/api/health", folder, env)
