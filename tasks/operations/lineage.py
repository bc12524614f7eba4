"""Lineage: the registered versions as rows (for a table, or JSON for scripts)."""

from __future__ import annotations

from lethe.tasks.stores.registry import PRODUCTION, Registry

KEY_METRICS = ("forget_acc_max", "retain_acc_mean", "kid", "before.forget_acc", "before.retain_acc_mean")


def status_of(version, aliases: list[str]) -> str:
    if PRODUCTION in aliases:
        return "production"
    if version.tags.get("rolled_back") == "true":
        return "rolled_back"
    if version.tags.get("kind") == "base":
        return "base"
    gate = "passed" if version.tags.get("approved_by") else version.tags.get("gate")  # a person's approval
    return {"failed": "rejected", "passed": "superseded"}.get(gate, "incomplete")


def lineage(registry: Registry) -> list[dict]:
    alias_map = registry.client.get_registered_model(registry.model_name).aliases  # alias -> version
    rows = []
    for v in registry.versions():
        aliases = sorted(a for a, n in alias_map.items() if str(n) == str(v.version))
        metrics = registry.client.get_run(v.run_id).data.metrics if v.run_id else {}
        tags = dict(v.tags)
        rows.append(
            {
                "version": str(v.version),
                "request_id": int(tags["request_id"]) if tags.get("request_id") else None,
                "kind": tags.get("kind"),
                "concept": tags.get("concept"),
                "anchor": tags.get("anchor"),
                "parent_version": tags.get("parent_version") or None,
                "aliases": aliases,
                "status": status_of(v, aliases),
                "gate_reasons": tags.get("gate_reasons", ""),
                "forgotten": [c for c in tags.get("forgotten", "").split(",") if c],
                "metrics": dict(metrics),
                "tags": tags,
                "run_id": v.run_id,
                "created": v.creation_timestamp,
            }
        )
    return rows


def label_of(row: dict) -> str:
    """What a version without a concept is: the base or a consolidation (its tags say what it folded)."""
    if row.get("kind") == "consolidation":
        return "(consolidated)"
    return "(base)"


def format_lineage(rows: list[dict]) -> str:
    header = (
        f"{'version':>7}  {'request':>7}  {'concept':<10} {'anchor':<10} {'parent':>6}  "
        f"{'forget':>6} {'retain':>6} {'kid':>7}  {'status':<11} aliases"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        m = r["metrics"]
        forget = f"{m.get('forget_acc_max', 0):>6.3f}" if r["forgotten"] else f"{'-':>6}"
        lines.append(
            f"{r['version']:>7}  {r['request_id'] or '-':>7}  {r['concept'] or label_of(r):<10} "
            f"{r['anchor'] or '-':<10} "
            f"{r['parent_version'] or '-':>6}  {forget} {m.get('retain_acc_mean', 0):>6.3f} "
            f"{m.get('kid', 0):>7.4f}  {r['status']:<11} {','.join(r['aliases'])}"
        )
        if r["gate_reasons"]:
            lines.append(f"{'':>9}{'gates' if r['tags'].get('approved_by') else 'rejected'}: {r['gate_reasons']}")
        for key in sorted((k for k in r["tags"] if k.startswith("decision.")), key=lambda k: int(k.split(".")[1])):
            lines.append(f"{'':>9}decision: {r['tags'][key]}")
    lines.append(
        "forget = worst judged accuracy over every concept forgotten so far (lower is better); "
        "retain = mean over retained concepts"
    )
    return "\n".join(lines)
