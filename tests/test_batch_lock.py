import subprocess
import sys

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
