"""Mechanics of the continual benchmark (not its targets): every method runs the sequence on a tiny fixture
and writes the rows a checking script expects."""
import json

from benchmarks.continual import main

FIELDS = {"method", "step", "concept", "forget_acc", "retain_acc_in", "retain_acc_cross", "kid", "trainable_params",
          "base_params", "step_seconds", "sample_seconds", "peak_rss_mb"}


def test_both_methods_run_the_sequence_and_write_the_rows(tiny_pipeline, tmp_path):
    out = tmp_path / "continual.json"
    assert main(["--methods", "lethe,dfr-ft", "--sequence", "trouser:dress,digit_3:digit_8", "--eval-samples", "4",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["step"]) for r in rows] == [("lethe", 0), ("lethe", 1), ("lethe", 2),
                                                         ("dfr-ft", 0), ("dfr-ft", 1), ("dfr-ft", 2)]
    assert all(FIELDS <= set(r) for r in rows)
    lethe, full = rows[2], rows[5]
    assert set(lethe["forget_acc_each"]) == {"trouser", "digit_3"}
    assert 0 < lethe["trainable_params"] < 0.05 * lethe["base_params"]  # one adapter per request
    assert full["trainable_params"] == full["base_params"]  # full fine-tune
    assert rows[0]["forget_acc"] is None and rows[0]["retain_acc_in"] == 1.0
