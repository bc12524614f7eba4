import subprocess
import sys
import time

import pytest

from lethe.tasks.stores.batch_lock import BatchAlreadyRunning, batch_lock


def test_a_second_batch_is_refused_while_one_holds_the_lock(tmp_path):
    lock = tmp_path / "batch.lock"
    probe = (
        "import sys; from pathlib import Path\n"
        "from lethe.tasks.stores.batch_lock import batch_lock, BatchAlreadyRunning\n"
        "try:\n    with batch_lock(Path(sys.argv[1])): print('got it')\n"
        "except BatchAlreadyRunning as e: print('refused:', e)"
    )
    with batch_lock(lock):
        other = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True, check=True)
        assert other.stdout.startswith("refused: another batch holds")
        with pytest.raises(BatchAlreadyRunning):
            with batch_lock(lock):
                pass
    again = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "got it"  # released when the holder finished


def test_lethe_run_exits_with_a_clear_message_when_a_batch_is_running(tiny_pipeline, prefect_harness, capsys):
    assert tiny_pipeline("request", "add", "coat") == 0
    workspace = tiny_pipeline.workspace
    with batch_lock(workspace / "batch.lock"):
        assert tiny_pipeline("run") == 3
    assert "another batch holds" in capsys.readouterr().err
    from lethe.tasks.stores.queue import RequestQueue

    assert RequestQueue(workspace / "queue.sqlite").get(1).state == "pending"  # nothing was touched
    assert not (workspace / "mlflow.db").exists()  # the lock came before the registry was opened


def test_two_machines_sharing_a_postgresql_queue_run_one_batch_at_a_time(tmp_path, postgres_url):
    """Two workspaces (two machines: separate file locks) share one PostgreSQL queue: the database's lock
    refuses the second batch, says who holds it, and is free again when the holder's connection ends."""
    from tests.servers import create_database

    url = create_database(postgres_url, "batch_lock")
    probe = (
        "import sys; from pathlib import Path\n"
        "from lethe.tasks.stores.batch_lock import batch_lock, BatchAlreadyRunning\n"
        "try:\n    with batch_lock(Path(sys.argv[1]), sys.argv[2]): print('got it')\n"
        "except BatchAlreadyRunning as e: print('refused:', e)"
    )
    other_machine = [sys.executable, "-c", probe, str(tmp_path / "b" / "batch.lock"), url]
    with batch_lock(tmp_path / "a" / "batch.lock", url):
        other = subprocess.run(other_machine, capture_output=True, text=True, check=True)
        assert other.stdout.startswith("refused: another batch holds the shared queue's batch lock (client")
    assert subprocess.run(other_machine, capture_output=True, text=True, check=True).stdout.strip() == "got it"
    # a holder that dies without unlocking: the server drops its session and the lock with it
    holder = subprocess.Popen(
        [sys.executable, "-c", probe.replace("print('got it')", "print('got it', flush=True); sys.stdin.read()")]
        + [str(tmp_path / "c" / "batch.lock"), url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "got it"
    assert "shared queue's batch lock" in subprocess.run(other_machine, capture_output=True, text=True).stdout
    holder.kill()
    holder.wait()
    deadline = time.time() + 10
    while subprocess.run(other_machine, capture_output=True, text=True).stdout.strip() != "got it":
        assert time.time() < deadline, "the dead holder's lock was never released"
