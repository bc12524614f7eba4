"""`lethe certificate REQUEST_ID`: one self-contained page (HTML, and the same facts as JSON) that an auditor
can file for a deletion request.

It says who asked and when, which version fulfils the request and its lineage down to the base, the forget
and retain evidence with 95% intervals and the version's sample grid, the recovery-attack result where one was
recorded, the hashes that pin the model, the adapter and the replay sets, and the commands that check them
again. Everything comes from the queue and the registry; nothing is re-measured, so the page states what was
recorded when the version was registered, and the commands let anyone measure it again.
"""

from __future__ import annotations

import base64
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, select_autoescape
from mlflow.exceptions import MlflowException

from lethe.tasks.operations.lineage import status_of
from lethe.tasks.settings import redacted
from lethe.tasks.steps.intervals import wilson
from lethe.tasks.steps.recovery_audit import ATTACKED, REAL
from lethe.tasks.stores.integrity import MANIFEST_TAG
from lethe.tasks.stores.queue import DONE, RequestQueue
from lethe.tasks.stores.registry import PRODUCTION, Registry


class NoCertificate(ValueError):
    """A request that no version fulfils (yet); the message says why."""


def evidence_row(concept: str, role: str, accuracy: float, n: int, before: float | None = None) -> dict:
    hits = round(accuracy * n)
    return {
        "concept": concept,
        "role": role,
        "accuracy": round(accuracy, 4),
        "interval95": wilson(hits, n),
        "judged": f"{hits} of {n}",
        "before": None if before is None else round(before, 4),
    }


def recovery_attack(tags: dict, params: dict) -> dict:
    """The recovery audit recorded with the version: per forgotten concept, the attacked samples' judged
    accuracy with its interval, the budget and the gate's threshold; or why there is none."""
    if "recovery.budget" not in tags:
        return {"audited": False, "why": tags.get("recovery", "the version predates the recovery audit")}
    budget = json.loads(tags["recovery.budget"])
    images = json.loads(tags.get("recovery_images", "{}"))  # absent before text-to-image audits: all real images
    rows = []
    for key, value in sorted(tags.items()):
        if key.startswith("recovery.") and key != "recovery.budget":
            concept, accuracy = key.removeprefix("recovery."), float(value)
            hits = round(accuracy * budget["samples"])
            rows.append(
                {
                    "concept": concept,
                    "accuracy": accuracy,
                    "interval95": wilson(hits, budget["samples"]),
                    "judged": f"{hits} of {budget['samples']}",
                    "images": images.get(concept, REAL),
                }
            )
    return {
        "audited": True,
        "vector": tags.get("recovery_attack", ATTACKED["class-conditional"]),
        "rows": rows,
        "budget": budget,
        "threshold": params.get("gates.recovery_acc_max"),
    }


def certificate(queue: RequestQueue, registry: Registry, request_id: int, mlflow_location: str) -> dict:
    """The certificate's facts for `request_id`; refused unless a registered version fulfils the request."""
    request = queue.get(request_id)
    if request.state != DONE or not request.version:
        raise NoCertificate(
            f"request {request_id} ({request.concept}) is {request.state}"
            + (f": {request.reasons}" if request.reasons else "")
            + "; a certificate is written only for a request that a promoted version fulfils"
        )
    version = registry.version(request.version)
    tags = version.tags
    run = registry.client.get_run(version.run_id)
    metrics, params = run.data.metrics, run.data.params
    n = int(params["eval.samples_per_concept"])
    aliases = registry.client.get_registered_model(registry.model_name).aliases
    production = str(aliases.get(PRODUCTION, ""))
    forgotten = [c for c in tags.get("forgotten", "").split(",") if c]
    accuracy = {k.removeprefix("acc."): v for k, v in metrics.items() if k.startswith("acc.")}
    before = metrics.get("before.forget_acc")
    rows = [evidence_row(request.concept, "forgotten by this request", accuracy[request.concept], n, before)]
    rows += [evidence_row(c, "forgotten earlier", accuracy[c], n) for c in forgotten if c != request.concept]
    rows += [evidence_row(c, "retained", a, n) for c, a in sorted(accuracy.items()) if c not in forgotten]
    chain, current = [], str(version.version)
    while current:
        v = registry.version(current)
        names = sorted(a for a, number in aliases.items() if str(number) == current)
        chain.append(
            {
                "version": current,
                "request_id": v.tags.get("request_id") or None,
                "concept": v.tags.get("concept") or None,
                "anchor": v.tags.get("anchor") or None,
                "status": status_of(v, names),
                "weights_sha256": v.tags.get(MANIFEST_TAG),
            }
        )
        current = v.tags.get("parent_version", "")
    attack = recovery_attack(tags, params)
    return {
        "certificate": "Lethe deletion certificate",
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "request": {
            "id": request.id,
            "concept": request.concept,
            "anchor": tags.get("anchor") or request.anchor,
            "note": request.note,
            "received_at": request.created_at,
            "started_at": request.started_at,
            "fulfilled_at": request.finished_at,
            "attempts": request.attempts,
            "due_at": request.due_at,
            "prompts": list(request.prompts),
            "attempt_log": list(request.attempt_log),
            "decisions": [d.to_dict() for d in queue.decisions(request.id)],
        },
        "version": {
            "model": registry.model_name,
            "version": str(version.version),
            "parent_version": tags.get("parent_version"),
            "status": chain[0]["status"],
            "production_now": production,
            "registered_at": datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc).isoformat(
                timespec="seconds"
            ),
            "run_id": version.run_id,
            "registry": redacted(mlflow_location),
            "gate": tags.get("gate"),
            "forgotten": forgotten,
            "lineage": chain,
        },
        "evidence": {
            "judge": "the workspace's judge classifier",
            "samples_per_concept": n,
            "rows": rows,
            "retained_mean": round(metrics.get("retain_acc_mean", float("nan")), 4),
            "retained_mean_before": round(metrics.get("before.retain_acc_mean", float("nan")), 4),
            "kid": metrics.get("kid"),
            "held_out_paraphrases": metrics.get(f"held_out_acc.{request.concept}"),
        },
        "recovery_attack": attack or None,
        "hashes": {
            "model_files_sha256": tags.get(MANIFEST_TAG),
            "adapter": tags.get("adapter_name"),
            "adapter_sha256": tags.get("adapter_sha256"),
            "samples_sha256": tags.get("sample_sha256"),
            "forget_replay_set": {"path": tags.get("forget_path"), "md5": tags.get("forget_md5")},
            "retain_replay_set": {"path": tags.get("retain_path"), "md5": tags.get("retain_md5")},
        },
        "reproduce": [
            f"lethe pull {version.version}    # fetch the version; its files are checked against model_files_sha256",
            f"lethe show {version.version}    # every tag and metric, and the dvc pull of both replay sets",
            f"lethe sample --version {version.version} --concept {request.concept} --n {n} --seed 0 "
            f"--out {request.concept}.png    # look: these must not show {request.concept}",
            f"lethe rollback --to {version.version} --reason 'audit'    # only if it is not production: "
            "restores it and checks samples_sha256 bit for bit",
        ],
    }


PAGE = Environment(autoescape=select_autoescape(default=True, default_for_string=True)).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Deletion certificate: request {{ c.request.id }}</title>
<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:0 1em;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}
code{font-size:.9em;word-break:break-all}img{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}
.ok{color:#060}.warn{color:#a00}</style></head><body>
<h1>Deletion certificate</h1>
<p>Request <b>{{ c.request.id }}</b>: forget <b>{{ c.request.concept }}</b>
(steered to <b>{{ c.request.anchor }}</b>), fulfilled by version <b>{{ c.version.version }}</b>
of <code>{{ c.version.model }}</code>.</p>
<h2>The request</h2>
<table>
<tr><th>who / why (note)</th><td>{{ c.request.note or "(no note)" }}</td></tr>
<tr><th>received</th><td>{{ c.request.received_at }}</td></tr>
<tr><th>fulfilled</th><td>{{ c.request.fulfilled_at }} (attempt {{ c.request.attempts }})</td></tr>
{% if c.request.due_at %}<tr><th>due</th><td>{{ c.request.due_at }}</td></tr>{% endif %}
{% if c.request.prompts %}<tr><th>prompts</th><td>{{ c.request.prompts | join("; ") }}</td></tr>{% endif %}
</table>
{% if c.request.attempt_log %}<table><tr><th>attempt</th><th>why it ran</th><th>anchor</th><th>version</th>
<th>result</th></tr>{% for a in c.request.attempt_log %}<tr><td>{{ a.attempt }}</td><td>{{ a.why }}</td>
<td>{{ a.anchor or "-" }}</td><td>{{ a.version or "-" }}</td>
<td>{{ "passed" if a.passed else (a.reasons | join("; ")) }}</td></tr>{% endfor %}</table>{% endif %}
{% if c.request.decisions %}<p>Decisions on record:</p><table><tr><th>when</th><th>who</th><th>decision</th>
<th>version</th><th>why</th></tr>{% for d in c.request.decisions %}<tr><td>{{ d.at }}</td><td>{{ d.by_user }}</td>
<td>{{ d.action }}</td><td>{{ d.version or "-" }}</td><td>{{ d.reason }}</td></tr>{% endfor %}</table>{% endif %}
<h2>The version</h2>
<p>Version {{ c.version.version }} ({{ c.version.status }}; production is now version
{{ c.version.production_now }}), registered {{ c.version.registered_at }}, gate
<b>{{ c.version.gate }}</b>. Concepts it forgets: {{ c.version.forgotten | join(", ") }}.</p>
<table><tr><th>version</th><th>request</th><th>forgets → anchor</th><th>status</th><th>files sha256</th></tr>
{% for v in c.version.lineage %}<tr><td>{{ v.version }}</td><td>{{ v.request_id or "-" }}</td>
<td>{{ v.concept or "(base)" }}{% if v.anchor %} → {{ v.anchor }}{% endif %}</td><td>{{ v.status }}</td>
<td><code>{{ v.weights_sha256 }}</code></td></tr>{% endfor %}</table>
<h2>Evidence</h2>
<p>The judge's accuracy on {{ c.evidence.samples_per_concept }} samples per concept, with 95% Wilson intervals.
A forgotten concept should be near 0; a retained one near its accuracy before the request.</p>
<table><tr><th>concept</th><th>role</th><th>accuracy</th><th>95% interval</th><th>judged</th><th>before</th></tr>
{% for r in c.evidence.rows %}<tr><td>{{ r.concept }}</td><td>{{ r.role }}</td><td>{{ "%.3f" % r.accuracy }}</td>
<td>{{ "%.3f" % r.interval95[0] }} – {{ "%.3f" % r.interval95[1] }}</td><td>{{ r.judged }}</td>
<td>{{ "-" if r.before is none else "%.3f" % r.before }}</td></tr>{% endfor %}</table>
<p>Retained concepts, mean accuracy: {{ c.evidence.retained_mean_before }} before, {{ c.evidence.retained_mean }} after.
{% if c.evidence.held_out_paraphrases is not none %}Held-out paraphrases of {{ c.request.concept }}:
{{ "%.3f" % c.evidence.held_out_paraphrases }}.{% endif %}</p>
{% if grid %}<p><img alt="samples of version {{ c.version.version }}: one labelled row per concept,
{{ c.request.concept }} first" src="data:image/png;base64,{{ grid }}"></p>{% endif %}
<h2>Recovery attack</h2>
{% if c.recovery_attack.audited %}<p>A white-box attacker optimised {% if c.recovery_attack.vector ==
"token embedding" %}a free token embedding (textual inversion: one vector at a placeholder token, in a prompt
holding nothing else){% else %}a free class embedding{% endif %} on up to {{ c.recovery_attack.budget.images }}
images of each forgotten concept ({{ c.recovery_attack.budget.steps }} Adam steps of
{{ c.recovery_attack.budget.batch_size }}, lr {{ c.recovery_attack.budget.lr }}; where the images came from is
in the table) and drew {{ c.recovery_attack.budget.samples }} samples with it. The share judged as the concept
(gate: at most {{ c.recovery_attack.threshold }}):</p>
<table><tr><th>concept</th><th>attacked samples judged as it</th><th>95% interval</th><th>judged</th>
<th>attacker's images</th></tr>
{% for r in c.recovery_attack.rows %}<tr><td>{{ r.concept }}</td><td>{{ "%.3f" % r.accuracy }}</td>
<td>{{ "%.3f" % r.interval95[0] }} – {{ "%.3f" % r.interval95[1] }}</td><td>{{ r.judged }}</td>
<td>{{ r.images }}</td></tr>
{% endfor %}</table>{% else %}<p class="warn">Not audited: {{ c.recovery_attack.why }}.</p>{% endif %}
<h2>Hashes</h2>
<table>
<tr><th>model files (manifest sha256)</th><td><code>{{ c.hashes.model_files_sha256 }}</code></td></tr>
<tr><th>adapter {{ c.hashes.adapter }} (sha256)</th><td><code>{{ c.hashes.adapter_sha256 }}</code></td></tr>
<tr><th>fixed-seed samples (sha256)</th><td><code>{{ c.hashes.samples_sha256 }}</code></td></tr>
<tr><th>forget replay set (md5)</th><td><code>{{ c.hashes.forget_replay_set.md5 }}</code>
{{ c.hashes.forget_replay_set.path }}</td></tr>
<tr><th>retain replay set (md5)</th><td><code>{{ c.hashes.retain_replay_set.md5 }}</code>
{{ c.hashes.retain_replay_set.path }}</td></tr>
</table>
<h2>How to check it again</h2>
<p>In a workspace configured for registry <code>{{ c.version.registry }}</code>:</p>
<pre>{% for line in c.reproduce %}{{ line }}
{% endfor %}</pre>
<p><small>Written {{ c.written_at }} by <code>lethe certificate {{ c.request.id }}</code> from the queue and the
registry; MLflow run <code>{{ c.version.run_id }}</code>.</small></p>
</body></html>
""")


def write_certificate(facts: dict, registry: Registry, out: Path) -> tuple[Path, Path]:
    """`out/request-N.html` (self-contained: the grid is inline) and `out/request-N.json`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"request-{facts['request']['id']}"
    grid = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = registry.client.download_artifacts(facts["version"]["run_id"], "samples/samples.png", tmp)
            grid = base64.b64encode(Path(local).read_bytes()).decode()
        except (MlflowException, OSError):
            pass  # a version registered without a grid still gets its certificate, without the picture
    stem.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    stem.with_suffix(".html").write_text(PAGE.render(c=facts, grid=grid))
    return stem.with_suffix(".html"), stem.with_suffix(".json")
