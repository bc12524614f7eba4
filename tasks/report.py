"""Reports a person would rather look at than read: a plot of forget/retain across the lineage, and a page
(Markdown + HTML) with the lineage table and every version's sample grid."""
from __future__ import annotations

import html
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402

from tasks.registry import Registry  # noqa: E402

STATUS_COLOURS = {"base": "tab:gray", "production": "tab:green", "superseded": "tab:blue",
                  "rejected": "tab:red", "rolled_back": "tab:orange", "incomplete": "black"}


def lineage_plot(rows: list[dict], path: Path) -> Path:
    """Forget accuracy (worst forgotten concept) and retained mean accuracy per version, coloured by status."""
    versions = [int(r["version"]) for r in rows]
    retain = [r["metrics"].get("retain_acc_mean", float("nan")) for r in rows]
    forget = [r["metrics"].get("forget_acc_max", float("nan")) if r["forgotten"] else float("nan") for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 3.2), dpi=110)
    ax.plot(versions, retain, "-", color="tab:blue", alpha=0.4)
    ax.plot(versions, forget, "-", color="tab:red", alpha=0.4)
    for v, r, f, row in zip(versions, retain, forget, rows):
        colour = STATUS_COLOURS.get(row["status"], "black")
        ax.scatter([v], [r], marker="o", color=colour, zorder=3)
        ax.scatter([v], [f], marker="x", color=colour, zorder=3)
        if row["concept"]:
            ax.annotate(row["concept"], (v, f if f == f else 0), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)
    ax.set_xlabel("version")
    ax.set_ylabel("judged accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(versions)
    ax.set_title("retained mean (o) and worst forgotten (x); colour = status", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(registry: Registry, rows: list[dict], out: Path) -> Path:
    """`out/index.md` and `out/index.html` with the lineage table, the plot and each version's sample grid."""
    out.mkdir(parents=True, exist_ok=True)
    lineage_plot(rows, out / "lineage.png")
    sections = []
    for row in rows:
        grid = None
        if row["run_id"]:
            try:
                local = mlflow.artifacts.download_artifacts(run_id=row["run_id"], artifact_path="samples/samples.png",
                                                            tracking_uri=registry.workspace.mlflow_uri)
                grid = out / f"v{row['version']}-samples.png"
                shutil.copyfile(local, grid)
            except Exception:  # a version registered without a grid still gets its row
                grid = None
        sections.append((row, grid))
    md = ["# Lethe lineage", "", "![forget and retain per version](lineage.png)", "",
          "| version | request | concept → anchor | parent | worst forget | retained | KID | status |",
          "|---|---|---|---|---|---|---|---|"]
    for row, _ in sections:
        m = row["metrics"]
        forget = f"{m.get('forget_acc_max', 0):.3f}" if row["forgotten"] else "-"
        md.append(f"| {row['version']} | {row['request_id'] or '-'} | "
                  f"{(row['concept'] or 'base') + (' → ' + row['anchor'] if row['anchor'] else '')} | "
                  f"{row['parent_version'] or '-'} | {forget} | {m.get('retain_acc_mean', 0):.3f} | "
                  f"{m.get('kid', 0):.3f} | {row['status']} |")
    md.append("")
    for row, grid in sections:
        md += [f"## Version {row['version']} ({row['status']})", ""]
        if row["gate_reasons"]:
            md += [f"Rejected: {row['gate_reasons']}", ""]
        if row["forgotten"]:
            md += [f"Forgotten so far: {', '.join(row['forgotten'])}", ""]
        if grid:
            md += [f"![samples of version {row['version']}: one row per concept]({grid.name})", ""]
    (out / "index.md").write_text("\n".join(md) + "\n")
    body = []
    for line in md:
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<p><img src="{html.escape(src[:-1])}" alt="{html.escape(alt)}"></p>')
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if line.startswith("| version") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    page = "\n".join(body).replace("</p>\n<tr>", "</p>\n<table>\n<tr>", 1)
    page = page.replace("</tr>\n<h2>", "</tr>\n</table>\n<h2>", 1)
    (out / "index.html").write_text("<!doctype html><meta charset='utf-8'><title>Lethe lineage</title>"
                                    "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
                                    "td,th{border:1px solid #ccc;padding:2px 6px}img{image-rendering:pixelated}</style>\n"
                                    + page + "\n")
    return out / "index.html"
