"""`lethe report`: a page a person would rather look at than read. A plot of forget/retain across the lineage,
and Markdown + HTML with the lineage table (with the recovery attack's worst success) and every version's
labelled sample grid.

The Markdown is the source; the HTML is rendered from it by the `markdown` library (tables extension) inside
a Jinja template, so every value is escaped by the libraries, not by hand.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import markdown
from jinja2 import Environment, select_autoescape
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from lethe.tasks.operations.lineage import label_of
from lethe.tasks.stores.registry import Registry

STATUS_COLOURS = {
    "base": "tab:gray",
    "production": "tab:green",
    "superseded": "tab:blue",
    "rejected": "tab:red",
    "rolled_back": "tab:orange",
    "incomplete": "black",
}
PAGE = Environment(autoescape=select_autoescape()).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;max-width:70em;margin:auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}
img{image-rendering:pixelated;max-width:100%}</style></head>
<body>{{ body | safe }}</body></html>
""")


def lineage_plot(rows: list[dict], path: Path) -> Path:
    """Forget accuracy (worst forgotten concept) and retained mean accuracy per version, coloured by status."""
    versions = [int(r["version"]) for r in rows]
    retain = [r["metrics"].get("retain_acc_mean", float("nan")) for r in rows]
    forget = [r["metrics"].get("forget_acc_max", float("nan")) if r["forgotten"] else float("nan") for r in rows]
    fig = Figure(figsize=(max(5.0, 0.6 * len(rows) + 2), 3.4), dpi=110)  # no pyplot: no backend to choose
    ax = fig.subplots()
    ax.plot(versions, retain, "-", color="tab:blue", alpha=0.4)
    ax.plot(versions, forget, "-", color="tab:red", alpha=0.4)
    for v, r, f, row in zip(versions, retain, forget, rows):
        colour = STATUS_COLOURS.get(row["status"], "black")
        ax.scatter([v], [r], marker="o", color=colour, zorder=3)
        ax.scatter([v], [f], marker="x", color=colour, zorder=3)
        if row["concept"]:
            ax.annotate(
                row["concept"],
                (v, f if f == f else 0),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
    ax.set_xlabel("version")
    ax.set_ylabel("judged accuracy")
    ax.set_ylim(-0.05, 1.1)
    ax.set_xticks(versions)
    ax.set_title("retained mean (o) and worst forgotten (x)\ncolour = status", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def lineage_markdown(rows: list[dict], grids: dict[str, str]) -> str:
    """The page's Markdown: the plot, the lineage table and a section per version with its grid."""
    md = [
        "# Lethe lineage",
        "",
        "![forget and retain per version](lineage.png)",
        "",
        "| version | request | concept → anchor | parent | worst forget | recovery attack (worst) | retained | KID "
        "| status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["metrics"]
        forget = f"{m.get('forget_acc_max', 0):.3f}" if row["forgotten"] else "-"
        attack = f"{m['recovery_acc_max']:.3f}" if "recovery_acc_max" in m else "-"
        step = (row["concept"] or label_of(row).strip("()")) + (" → " + row["anchor"] if row["anchor"] else "")
        md.append(
            f"| {row['version']} | {row['request_id'] or '-'} | {step} | {row['parent_version'] or '-'} | "
            f"{forget} | {attack} | {m.get('retain_acc_mean', 0):.3f} | {m.get('kid', 0):.3f} | {row['status']} |"
        )
    md.append("")
    for row in rows:
        md += [f"## Version {row['version']} ({row['status']})", ""]
        if row["gate_reasons"]:
            md += [f"Rejected: {row['gate_reasons']}", ""]
        if row["forgotten"]:
            md += [f"Forgotten so far: {', '.join(row['forgotten'])}", ""]
        if row["version"] in grids:
            md += [f"![samples of version {row['version']}: one labelled row per concept]({grids[row['version']]})", ""]
    return "\n".join(md) + "\n"


def write_report(registry: Registry, rows: list[dict], out: Path) -> Path:
    """`out/index.md` and `out/index.html` with the lineage table, the plot and each version's sample grid."""
    out.mkdir(parents=True, exist_ok=True)
    lineage_plot(rows, out / "lineage.png")
    grids = {}
    for row in rows:
        if not row["run_id"]:
            continue
        try:
            local = registry.client.download_artifacts(row["run_id"], "samples/samples.png", str(out))
        except (MlflowException, OSError):  # a version registered without a grid still gets its row
            continue
        grid = out / f"v{row['version']}-samples.png"
        shutil.move(local, grid)
        grids[row["version"]] = grid.name
    shutil.rmtree(out / "samples", ignore_errors=True)
    text = lineage_markdown(rows, grids)
    (out / "index.md").write_text(text)
    body = markdown.markdown(text, extensions=["tables"])
    (out / "index.html").write_text(PAGE.render(title="Lethe lineage", body=body))
    return out / "index.html"
