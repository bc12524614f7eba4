"""Fulfilment benchmark: the real pipeline (`lethe run`, Prefect, MLflow, DVC) on a benchmark sequence, every
anchor left to the automatic rule, with the shipped settings and escalation ladder; how many requests end done
with no person involved, and what the ladder cost.

    python benchmarks/fulfilment.py                       # the ten-request sequence, automatic anchors
    python benchmarks/fulfilment.py --sequence fresh-ten  # ten requests not used to design the ladder
    python benchmarks/fulfilment.py --sequence thirty     # the long sequence's 30 requests
    python benchmarks/fulfilment.py --sequence text --params params.text-to-image.yaml   # text-to-image

Each request is queued and the batch runs once over all of them, in a fresh workspace under --work. Per request:
its final state, its attempts (each one's anchor, changes, reasons and seconds) and its minutes; per sequence:
the fulfilment rate, the extra attempts and the extra minutes (attempts after the first). Results go to
`results/fulfilment.json`, keyed by sequence name.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.continual import RESULTS, TEN_SEQUENCE, machine, write  # noqa: E402
from benchmarks.measures import sequence_of  # noqa: E402


def sequences() -> dict[str, str]:
    """Named sequences. `fresh-ten` is requests 11-20 of the thirty-request sequence: concepts that played no
    part in designing the ladder (its recovery rung came from the ten-request run's failures). `text` and
    `text-validation` are the text-to-image benchmark's test and validation sequences (run them with
    `--params params.text-to-image.yaml`)."""
    from benchmarks.continual_text import TEXT_SEQUENCE
    from benchmarks.export import VALIDATION as TEXT_VALIDATION
    from benchmarks.long_sequence import SEQUENCES, THIRTY_AUTO

    fresh_ten = ",".join(THIRTY_AUTO.split(",")[10:20])
    text = {"text": TEXT_SEQUENCE, "text-validation": TEXT_VALIDATION}
    return {"ten": TEN_SEQUENCE, "fresh-ten": fresh_ten, **SEQUENCES, **text}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default="ten", help="a name (ten, nineteen, thirty-auto, ...) or concept,...")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--work", help="workspace folder (default: a temporary one)")
    parser.add_argument("--out", default=str(RESULTS / "fulfilment.json"))
    args = parser.parse_args(argv)
    text = sequences().get(args.sequence, args.sequence)
    concepts = [c for c, _ in sequence_of(text)]  # the anchors are dropped: the automatic rule picks them

    from lethe.flows.cli import main as lethe
    from lethe.tasks.settings import load_settings
    from lethe.tasks.stores.queue import RequestQueue
    from lethe.tasks.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="lethe-fulfilment-") as tmp:
        work = Path(args.work or tmp)
        common = ["--params", args.params, "--workspace", str(work)]
        for concept in concepts:
            if lethe([*common, "request", "add", concept, "--note", f"fulfilment benchmark: {args.sequence}"]) != 0:
                raise SystemExit(f"could not queue {concept}")
        start = time.time()
        status = lethe([*common, "run"])
        minutes = (time.time() - start) / 60
        settings = load_settings(args.params).override({"paths.workspace": str(work)})
        requests = RequestQueue(Workspace.open(settings).queue_location).list()
    rows = [
        {
            "id": r.id,
            "concept": r.concept,
            "state": r.state,
            "attempts": len(r.attempt_log),
            "version": r.version,
            "minutes": round(sum(a["seconds"] for a in r.attempt_log) / 60, 2),
            "attempt_log": list(r.attempt_log),
        }
        for r in requests
    ]
    done = [r for r in rows if r["state"] == "done"]
    extra = [a for r in rows for a in r["attempt_log"][1:]]
    result = {
        "sequence": args.sequence,
        "requests": len(rows),
        "done": len(done),
        "fulfilment_rate": round(len(done) / len(rows), 4),
        "done_first_attempt": sum(r["attempts"] == 1 for r in done),
        "extra_attempts": len(extra),
        "extra_minutes": round(sum(a["seconds"] for a in extra) / 60, 2),
        "batch_minutes": round(minutes, 2),
        "batch_exit_status": status,
        "escalation": settings.escalation.model_dump(),
        "rows": rows,
        "machine": machine(),
        "command": "python benchmarks/fulfilment.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    earlier = json.loads(out.read_text()) if out.is_file() else []
    kept = [r for r in earlier if (r["sequence"], r["escalation"]) != (args.sequence, result["escalation"])]
    write(kept + [result], out)
    print(json.dumps({k: result[k] for k in ("sequence", "requests", "done", "extra_attempts", "extra_minutes")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
