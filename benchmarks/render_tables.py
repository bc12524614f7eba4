"""Benchmark report: turns the JSON written by the benchmark scripts into PNG plots and Markdown tables.

    python benchmarks/render_tables.py [--results DIR] [--markdown OUT.md]

Reads (each optional, a missing file skips its section) DIR/continual.json, DIR/continual-10.json,
DIR/sweep.json and DIR/ablation.json, writes plots under DIR/plots/ and prints the Markdown for BENCHMARKS.md
(or writes it to OUT.md). Kept separate from the benchmarks themselves so tables and figures can be regenerated without
re-running any training. Missing or null values are shown as "–" rather than failing.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, like the other benchmarks

from matplotlib.figure import Figure  # noqa: E402  (figures without pyplot: no backend to choose, headless anywhere)

from benchmarks.measures import set_overrides  # noqa: E402


def _subplots(*grid, figsize):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid)


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DASH = "–"

# (key, title, y label, scale applied before plotting): fractions are plotted as percentages.
CONTINUAL_METRICS = [
    ("forget_acc", "Forget accuracy (max over forgotten concepts)", "judged accuracy (%)", 100.0),
    ("retain_acc_in", "Retained accuracy, same domain", "% of base", 100.0),
    ("retain_acc_cross", "Retained accuracy, other domain", "% of base", 100.0),
    ("kid_ratio", "KID on retained concepts / base's on the same concepts", "ratio (lower is better)", 1.0),
    ("step_seconds", "Wall time per step", "seconds", 1.0),
    ("sample_seconds", "Sampling time (64 images)", "seconds", 1.0),
]

# result files (without .json) of benchmarks/long_sequence.py
LONG_RUNS = (
    "long-sequence",
    "long-sequence-30",
    "long-sequence-30-share",
    "long-sequence-30-attack",
    "long-sequence-30-confusion",
)
LONG_METRICS = [
    ("forget_acc", "Forget accuracy (max over forgotten concepts)", "judged accuracy (%)", 100.0),
    ("retain_acc", "Retained accuracy", "% of base", 100.0),
    ("sampling_ratio", "Sampling wall time / base's", "ratio", 1.0),
    ("step_seconds", "Step cost (replay + training + consolidation)", "seconds", 1.0),
]


# ----------------------------------------------------------------------------------------------- loading


def load(results_dir: Path, name: str) -> list[dict] | None:
    """Rows of one result file, or None when the benchmark has not been run (its section is skipped)."""
    path = Path(results_dir) / name
    if not path.exists():
        return None
    rows = json.loads(path.read_text())
    return rows if isinstance(rows, list) and rows else None


def in_order(values) -> list:
    """Distinct values in first-seen order, so methods appear in the order the benchmark ran them."""
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def by_method_step(rows: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """Rows grouped by method then step; several rows in one group are several training seeds."""
    groups: dict[str, dict[int, list[dict]]] = {}
    for row in rows:
        groups.setdefault(row["method"], {}).setdefault(int(row["step"]), []).append(row)
    return {m: dict(sorted(steps.items())) for m, steps in groups.items()}


def spread(rows: list[dict], key: str) -> tuple[float, float, float, int] | None:
    """Mean, min, max and count of a key over seeds, ignoring nulls; None when no row has a value."""
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    if not values:
        return None
    return sum(values) / len(values), min(values), max(values), len(values)


# ----------------------------------------------------------------------------------------------- formatting


def pct(value, digits: int = 1) -> str:
    return DASH if value is None else f"{100 * value:.{digits}f}%"


def num(value, fmt: str = ".2f") -> str:
    return DASH if value is None else format(value, fmt)


def agg(rows: list[dict], key: str, percent: bool = False, fmt: str = ".2f") -> str:
    """Mean ± half-range over seeds (just the value for a single seed)."""
    s = spread(rows, key)
    if s is None:
        return DASH
    mean, lo, hi, n = s
    scale, unit, fmt = (100.0, "%", ".1f") if percent else (1.0, "", fmt)
    text = format(mean * scale, fmt)
    if n > 1:
        text += f" ± {format((hi - lo) / 2 * scale, fmt)}"
    return text + unit


def forget_cell(row: dict) -> str:
    """Forget accuracy with its Wilson interval when the benchmark recorded one."""
    text = pct(row.get("forget_acc"))
    ci = row.get("forget_ci")
    if row.get("forget_acc") is not None and ci and None not in ci:
        text += f" [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"
    return text


def kid_cell(row: dict) -> str:
    text = num(row.get("kid"), ".4f")
    if row.get("kid") is not None and row.get("kid_ratio") is not None:
        text += f" (×{row['kid_ratio']:.2f})"
    return text


def params_cell(row: dict) -> str:
    """Trainable parameters and their share of the base UNet, the cost axis of the comparison."""
    trainable, base = row.get("trainable_params"), row.get("base_params")
    if trainable is None:
        return DASH
    text = f"{int(trainable):,}"
    if base:
        text += f" ({100 * trainable / base:.2f}%)"
    return text


def checks_cell(row: dict) -> str:
    """Drawn as anchor (worst forgotten concept), diversity against the base, and the pipeline's gates, where
    the run recorded them (rows made before issue 11 did not)."""
    parts = []
    if row.get("drawn_as_anchor") is not None:
        parts.append(f"as anchor {pct(row['drawn_as_anchor'], 0)}")
    if row.get("diversity_ratio_min") is not None:
        parts.append(f"diversity ×{row['diversity_ratio_min']:.2f}" + (" COLLAPSED" if row.get("collapsed") else ""))
    if "rejected" in row:
        parts.append(f"REJECTED ({len(row['gate_reasons'])})" if row["rejected"] else "gates pass")
    return ", ".join(parts) or DASH


def request_cell(row: dict) -> str:
    if int(row.get("step", 0)) == 0:
        return "base"
    concept, anchor = row.get("concept"), row.get("anchor")
    if concept is None:
        return DASH
    return f"{concept} → {anchor}" if anchor else str(concept)


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def image_link(path: Path, alt: str) -> str:
    """Link relative to the repo root (where BENCHMARKS.md lives) when possible."""
    path = Path(path).resolve()
    try:
        path = path.relative_to(ROOT)
    except ValueError:
        pass
    return f"![{alt}]({path.as_posix()})"


# ----------------------------------------------------------------------------------------------- plots


def plot_metric(ax, groups: dict[str, dict[int, list[dict]]], key: str, title: str, ylabel: str, scale: float) -> None:
    """One line per method over steps; min/max error bars where several seeds ran."""
    for index, (method, steps) in enumerate(groups.items()):
        color = f"C{index % 10}"  # fixed per method, so colours match across every figure
        xs, ys, lows, highs = [], [], [], []
        for step, rows in steps.items():
            s = spread(rows, key)
            if s is None:
                continue
            mean, lo, hi, _ = s
            xs.append(step)
            ys.append(mean * scale)
            lows.append(max(0.0, mean - lo) * scale)  # equal seeds: the mean may round past them
            highs.append(max(0.0, hi - mean) * scale)
        if not xs:
            continue
        if any(lows) or any(highs):
            ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, color=color, label=method)
        else:
            ax.plot(xs, ys, marker="o", color=color, label=method)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("unlearning step")
    ax.set_ylabel(ylabel)
    all_steps = sorted({step for steps in groups.values() for step in steps})
    if all_steps:
        ax.set_xticks(all_steps)
    ax.grid(alpha=0.3)


def plot_continual(rows: list[dict], plots: Path, prefix: str = "continual") -> list[Path]:
    """One PNG per metric plus a 2x3 overview (`prefix`.png)."""
    groups = by_method_step(rows)
    written = []
    for key, title, ylabel, scale in CONTINUAL_METRICS:
        fig, ax = _subplots(figsize=(6, 4))
        plot_metric(ax, groups, key, title, ylabel, scale)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = plots / f"{prefix}_{key}.png"
        fig.savefig(path, dpi=120)
        written.append(path)
    fig, axes = _subplots(2, 3, figsize=(15, 8))
    for ax, (key, title, ylabel, scale) in zip(axes.flat, CONTINUAL_METRICS):
        plot_metric(ax, groups, key, title, ylabel, scale)
    found = {}
    for ax in axes.flat:  # union of methods: a method may lack values for some metric
        for h, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, h)
    labels = [m for m in groups if m in found]  # benchmark order, not drawing order
    handles = [found[m] for m in labels]
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = plots / f"{prefix}.png"
    fig.savefig(path, dpi=110)
    return written + [path]


def plot_sweep(rows: list[dict], plots: Path) -> Path:
    """Forget and retained accuracy against the distillation horizon, labelled with its multiplier."""
    rows = sorted(rows, key=lambda r: (r.get("horizon") is None, r.get("horizon") or 0))
    fig, ax = _subplots(figsize=(6, 4))
    for key, label in (("forget_acc", "forget accuracy"), ("retain_acc", "retained accuracy (% of base)")):
        points = [(r["horizon"], 100 * r[key]) for r in rows if r.get("horizon") is not None and r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    for r in rows:
        if r.get("horizon") is not None and r.get("intensity") is not None and r.get("forget_acc") is not None:
            ax.annotate(
                f"×{r['intensity']:g}",
                (r["horizon"], 100 * r["forget_acc"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
    ax.margins(y=0.12)  # room for the intensity labels
    ax.set_title("Intensity sweep", fontsize=10)
    ax.set_xlabel("horizon")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = plots / "sweep.png"
    fig.savefig(path, dpi=120)
    return path


def ablation_label(row: dict, repeated: bool) -> str:
    """Variant name, with its step when the same variant was measured at several steps."""
    label = str(row.get("variant", DASH))
    if repeated and row.get("step") is not None:
        label += f" @{row['step']}"
    return label


def plot_ablation(rows: list[dict], plots: Path) -> Path:
    """Horizontal bars of forget and retained accuracy per variant, one pair per row."""
    names = [r.get("variant") for r in rows]
    labels = [ablation_label(r, names.count(r.get("variant")) > 1) for r in rows]
    fig, ax = _subplots(figsize=(7, 1.5 + 0.5 * len(rows)))
    height = 0.38
    ys = range(len(rows))
    for offset, key, label in (
        (-height / 2, "forget_acc", "forget accuracy"),
        (height / 2, "retain_acc", "retained accuracy (% of base)"),
    ):
        values = [100 * r[key] if r.get(key) is not None else float("nan") for r in rows]  # no bar for null
        ax.barh([y + offset for y in ys], values, height=height, label=label)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()  # first variant (usually the full method) on top
    ax.set_xlabel("%")
    ax.set_title("Ablations", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / (1.5 + 0.5 * len(rows)), 1, 1))
    path = plots / "ablation.png"
    fig.savefig(path, dpi=120)
    return path


def plot_all(results_dir: Path = RESULTS) -> list[Path]:
    """Write every plot whose input exists; returns the paths written."""
    results_dir = Path(results_dir)
    plots = results_dir / "plots"
    written = []
    continual, ten, sweep, ablation = (
        load(results_dir, n) for n in ("continual.json", "continual-10.json", "sweep.json", "ablation.json")
    )
    if continual or ten or sweep or ablation:
        plots.mkdir(parents=True, exist_ok=True)
    if continual:
        written += plot_continual(continual, plots)
    if ten:
        written += plot_continual(ten, plots, "continual10")
    if sweep:
        written.append(plot_sweep(sweep, plots))
    if ablation:
        written.append(plot_ablation(ablation, plots))
    test = load(results_dir, "test.json")
    if test:
        plots.mkdir(parents=True, exist_ok=True)
        written += plot_continual(test, plots, "test")
    for name in LONG_RUNS:
        long = load(results_dir, f"{name}.json")
        if long:
            plots.mkdir(parents=True, exist_ok=True)
            written.append(plot_long(long, plots, name))
    return written


def plot_long(rows: list[dict], plots: Path, name: str = "long-sequence") -> Path:
    """The long sequence's four curves against the request number, one line per method."""
    groups = by_method_step(rows)
    fig, axes = _subplots(2, 2, figsize=(12, 8))
    for ax, (key, title, ylabel, scale) in zip(axes.flat, LONG_METRICS):
        plot_metric(ax, groups, key, title, ylabel, scale)
        ax.set_xlabel("request")
    axes.flat[2].axhline(1.15, color="grey", linestyle="--", linewidth=1)  # the issue's target
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = plots / f"{name.replace('-', '_')}.png"
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------------------------- markdown


def continual_markdown(
    rows: list[dict], plots: Path, title: str = "Per-step results", prefix: str = "continual"
) -> str:
    """Per-method step tables, then the last step of every method side by side."""
    groups = by_method_step(rows)
    out = [f"## {title}", ""]
    header = [
        "step",
        "concept → anchor",
        "forget acc",
        "retain in-domain",
        "retain cross-domain",
        "unchanged",
        "KID",
        "checks",
        "trainable params",
        "step s",
        "sampling s",
        "peak RSS MB",
    ]
    for method, steps in groups.items():
        seeded = len({r.get("seed") for rs in steps.values() for r in rs}) > 1
        body = []
        for step, step_rows in steps.items():
            for row in sorted(step_rows, key=lambda r: (r.get("seed") is None, r.get("seed") or 0)):
                cells = [
                    str(step),
                    request_cell(row),
                    forget_cell(row),
                    pct(row.get("retain_acc_in")),
                    pct(row.get("retain_acc_cross")),
                    pct(row.get("unchanged")),
                    kid_cell(row),
                    checks_cell(row),
                    params_cell(row),
                    num(row.get("step_seconds"), ".1f"),
                    num(row.get("sample_seconds"), ".2f"),
                    num(row.get("peak_rss_mb"), ".0f"),
                ]
                if seeded:
                    cells.insert(1, DASH if row.get("seed") is None else str(row["seed"]))
                body.append(cells)
        method_header = header[:1] + ["seed"] + header[1:] if seeded else header
        out += [f"### {method}", "", table(method_header, body), ""]
    for key, metric, _, _ in CONTINUAL_METRICS:
        out.append(image_link(plots / f"{prefix}_{key}.png", metric))
    out += [
        "",
        f"## {title}: final step, all methods",
        "",
        "Last step of each method; mean ± half-range over training seeds where several ran.",
        "",
    ]
    body = []
    for method, steps in groups.items():
        last = max(steps)
        final = steps[last]
        seeds = len(final)
        # Total wall time over the whole sequence, per seed, then averaged like the other columns.
        totals: dict = {}
        for step_rows in steps.values():
            for r in step_rows:
                if r.get("step_seconds") is not None:
                    totals[r.get("seed")] = totals.get(r.get("seed"), 0.0) + r["step_seconds"]
        total_rows = [{"total": t} for t in totals.values()]
        forget = forget_cell(final[0]) if seeds == 1 else agg(final, "forget_acc", percent=True)
        kid = kid_cell(final[0]) if seeds == 1 else f"{agg(final, 'kid', fmt='.4f')} (×{agg(final, 'kid_ratio')})"
        body.append(
            [
                method,
                str(last),
                str(seeds),
                forget,
                agg(final, "retain_acc_in", percent=True),
                agg(final, "retain_acc_cross", percent=True),
                agg(final, "unchanged", percent=True),
                kid,
                params_cell(final[0]),
                agg(final, "step_seconds", fmt=".1f"),
                agg(total_rows, "total", fmt=".1f"),
                agg(final, "sample_seconds"),
                agg(final, "peak_rss_mb", fmt=".0f"),
            ]
        )
    out += [
        table(
            [
                "method",
                "step",
                "seeds",
                "forget acc",
                "retain in-domain",
                "retain cross-domain",
                "unchanged",
                "KID",
                "trainable params",
                "step s",
                "total s (all steps)",
                "sampling s",
                "peak RSS MB",
            ],
            body,
        ),
        "",
        image_link(plots / f"{prefix}.png", title),
        "",
    ]
    return "\n".join(out)


def sweep_markdown(rows: list[dict], plots: Path) -> str:
    rows = sorted(rows, key=lambda r: (r.get("intensity") is None, r.get("intensity") or 0))
    body = [
        [
            num(r.get("intensity"), "g"),
            num(r.get("horizon"), "g"),
            forget_cell(r),
            num(r.get("forget_prob"), ".4f"),
            pct(r.get("retain_acc")),
            pct(r.get("unchanged")),
            num(r.get("kid"), ".4f"),
        ]
        for r in rows
    ]
    return "\n".join(
        [
            "## Intensity sweep",
            "",
            table(
                [
                    "intensity",
                    "horizon",
                    "forget acc [95% CI]",
                    "judge's mean p(concept)",
                    "retain (% of base)",
                    "unchanged",
                    "KID",
                ],
                body,
            ),
            "",
            image_link(plots / "sweep.png", "Intensity sweep"),
            "",
        ]
    )


def floors_markdown(rows: list[dict], plots: Path) -> str:
    body = [
        [
            f"{r['concept']} → {r['anchor']}",
            forget_cell({"forget_acc": r.get("floor"), "forget_ci": r.get("floor_ci")}),
            pct(r.get("anchor_acc")),
            str(r.get("n", DASH)),
        ]
        for r in rows
    ]
    return "\n".join(
        [
            "## Forget floors",
            "",
            "Share of the base's samples *of the anchor* that the judge calls the forgotten concept: the "
            "forget accuracy of a model that renders the concept exactly as its anchor.",
            "",
            table(["request", "floor [95% CI]", "judge accuracy on the anchor", "samples"], body),
            "",
        ]
    )


def ablation_markdown(rows: list[dict], plots: Path) -> str:
    with_step = any(r.get("step") is not None or r.get("concept") is not None for r in rows)
    header = [
        "variant",
        "description",
        "targets",
        "forget acc",
        "retain (% of base)",
        "unchanged",
        "KID",
        "trainable params",
        "train s",
    ]
    if with_step:
        header[1:1] = ["step", "concept"]
    body = []
    for r in rows:
        targets = r.get("targets")
        cells = [
            str(r.get("variant", DASH)),
            str(r.get("description") or DASH),
            ", ".join(targets) if targets else DASH,
            pct(r.get("forget_acc")),
            pct(r.get("retain_acc")),
            pct(r.get("unchanged")),
            num(r.get("kid"), ".4f"),
            params_cell(r),
            num(r.get("train_seconds"), ".1f"),
        ]
        if with_step:
            cells[1:1] = [DASH if r.get("step") is None else str(r["step"]), str(r.get("concept") or DASH)]
        body.append(cells)
    return "\n".join(["## Ablations", "", table(header, body), "", image_link(plots / "ablation.png", "Ablations"), ""])


def text_markdown(rows: list[dict], plots: Path) -> str:
    """The text-to-image sequence (continual-text.json): forget on the requests' prompts and, apart, on
    held-out paraphrases, per method and step, then the last step side by side with the issue's targets."""
    groups = by_method_step(rows)
    first = next(iter(groups.values()), {})
    sequence = ", ".join(request_cell(rs[0]) for step, rs in first.items() if step > 0)
    command = rows[0].get("command", "") if rows else ""
    out = ["## Text-to-image: 5-request sequence", "", f"Sequence: {sequence}. `{command}`", ""]
    header = [
        "step",
        "seed",
        "concept → anchor",
        "forget (prompts)",
        "forget (held-out paraphrases)",
        "retain (% of base)",
        "drawn as anchor (worst)",
        "KID",
        "trainable params (% of UNet)",
        "replay s",
        "train s",
        "step s",
        "sampling s",
    ]

    def held_cell(row):
        text = pct(row.get("held_out_forget_acc"))
        ci = row.get("held_out_forget_ci")
        if row.get("held_out_forget_acc") is not None and ci:
            text += f" [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"
        return text

    def cells(row):
        return [
            str(row["step"]),
            str(row.get("seed", DASH)),
            request_cell(row),
            forget_cell(row),
            held_cell(row),
            pct(row.get("retain_acc")),
            pct(min(row["drawn_as_anchor_each"].values())) if row.get("drawn_as_anchor_each") else DASH,
            kid_cell(row),
            params_cell({**row, "base_params": row.get("unet_params")}),
            num(row.get("replay_seconds"), ".1f"),
            num(row.get("train_seconds"), ".1f"),
            num(row.get("step_seconds"), ".1f"),
            num(row.get("sample_seconds"), ".2f"),
        ]

    for method, steps in groups.items():
        body = [cells(r) for _, step_rows in steps.items() for r in sorted(step_rows, key=lambda r: r["seed"])]
        out += [f"### {method}", "", table(header, body), ""]
    final = []
    for method, steps in groups.items():
        last = steps[max(steps)]
        final.append(
            [
                method,
                str(len(last)),
                agg(last, "forget_acc", percent=True),
                agg(last, "held_out_forget_acc", percent=True),
                agg(last, "retain_acc", percent=True),
                agg(last, "kid_ratio", fmt=".2f"),
                agg([dict(r, per=r["trainable_params"] / r["unet_params"]) for r in last], "per", percent=True),
                agg(last, "stack_params", fmt=",.0f"),
                agg([r for s in steps.values() for r in s if r["step"] > 0], "step_seconds", fmt=".1f"),
            ]
        )
    final_header = [
        "method",
        "seeds",
        "forget (prompts), worst",
        "forget (held-out), worst",
        "retain (% of base)",
        "KID ratio",
        "params per request (% of UNet)",
        "adapter params in the model after 5",
        "mean step s",
    ]
    base = next(iter(first.get(0, [])), {})
    concept_header = ["method", "concept → anchor", "base (prompts)", "forget (prompts)", "forget (held-out)"]
    concept_header += ["anchor's confusion", "drawn as anchor"]
    concept_body = []
    for method, steps in groups.items():
        last = steps[max(steps)][0]
        for c, acc in last.get("forget_acc_each", {}).items():
            anchor = next((r[0]["anchor"] for r in steps.values() if r[0].get("concept") == c), None)
            concept_body.append(
                [
                    method,
                    f"{c} → {anchor}",
                    pct(base.get("forget_acc_each", {}).get(c)),
                    pct(acc),
                    pct(last.get("held_out_acc_each", {}).get(c)),
                    pct(last.get("floor_each", {}).get(c)),
                    pct(last.get("drawn_as_anchor_each", {}).get(c)),
                ]
            )
    out += ["### Every forgotten concept after the last step", "", table(concept_header, concept_body), ""]
    out += [
        "### After the 5th request",
        "",
        "Targets (issue 10): forget ≤ 5% on prompts and ≤ 10% on held-out paraphrases, retain ≥ 97% of the base, "
        "≤ 5 minutes per request, adapter parameters ≤ 1% of the UNet.",
        "",
        table(final_header, final),
        "",
    ]
    return "\n".join(out)


def config_cell(config: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in config.items()) or "as in params"


def tuning_markdown(rows: list[dict], plots: Path) -> str:
    """Validation runs under the protocol (tuning.json): every configuration's last step, the chosen one marked."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        runs.setdefault((r["tuned_method"], r["method"]), []).append(r)
    body = []
    for (method, label), steps in runs.items():
        last = max(steps, key=lambda r: r["step"])
        later = [r for r in steps if r["step"] > 0]
        each = ", ".join(f"{c} {pct(a)}" for c, a in last.get("forget_acc_each", {}).items())
        body.append(
            [
                method,
                config_cell(last.get("config", {})),
                each or DASH,
                pct(last.get("retain_acc")),
                pct(last.get("drawn_as_anchor")),
                "yes" if any(r.get("collapsed") for r in later) else "no",
                str(sum(bool(r.get("rejected")) for r in later)),
                num(last.get("kid_ratio")),
                "**chosen**" if last.get("chosen") else "",
            ]
        )
    header = [
        "method",
        "configuration",
        "forget per concept (last step)",
        "retain (% of base)",
        "drawn as anchor (worst)",
        "collapsed",
        "rejected steps",
        "KID ratio",
        "",
    ]
    commands = "\n".join(f"    {c}" for c in in_order(r.get("command", "") for r in rows))
    return "\n".join(["## Protocol: validation (tuning)", "", commands, "", table(header, body), ""])


def span(rows: list[dict], value, percent: bool = True) -> str:
    """Mean over seeds with its min–max in brackets (just the value for one seed); `value(row)` or None."""
    values = [v for v in (value(r) for r in rows) if v is not None]
    if not values:
        return DASH
    scale, fmt = (100.0, ".1f") if percent else (1.0, ".2f")
    text = format(sum(values) / len(values) * scale, fmt)
    if len(values) > 1:
        text += f" [{format(min(values) * scale, fmt)}–{format(max(values) * scale, fmt)}]"
    return text + ("%" if percent else "")


def within_confusion(row: dict) -> tuple[int, int]:
    """(concepts at or under max(2%, their anchor's confusion), concepts forgotten) in the row's last step."""
    floors, each = row.get("floors", {}), row.get("forget_acc_each", {})
    return sum(a <= max(0.02, floors.get(c, 0.0)) for c, a in each.items()), len(each)


def relative_anchor(row: dict, base: dict) -> float | None:
    """The worst forgotten concept's drawn-as-anchor share over the share of the anchor's own base samples
    the judge calls the anchor: 100% draws the concept as recognisably as the base draws its anchor."""
    anchors = {c: a for c, a in row.get("anchors", {}).items()}
    each = row.get("drawn_as_anchor_each") or {}
    ratios = [each[c] / base[a] for c, a in anchors.items() if c in each and base.get(a)]
    return min(ratios) if ratios else None


def protocol_markdown(rows: list[dict], plots: Path) -> str:
    """test.json's headline: per method, the last step over training seeds (mean [min–max]), the targets'
    columns, and every concept against its anchor's confusion."""
    groups = by_method_step(rows)
    body, concepts_body = [], []
    for method, steps in groups.items():
        last = max(steps)
        final, later = steps[last], [r for s, rs in steps.items() if s > 0 for r in rs]
        base = {r.get("seed"): r.get("accuracy", {}) for r in steps.get(0, [])}
        anchors = {r["concept"]: r.get("anchor") for r in later if r.get("anchor")}
        for r in final:
            r.setdefault("anchors", anchors)
        within = [within_confusion(r) for r in final]
        body.append(
            [
                method,
                str(last),
                ", ".join(str(r.get("seed")) for r in final),
                span(final, lambda r: r.get("forget_acc")),
                " / ".join(f"{k}/{n}" for k, n in within),
                span(final, lambda r: r.get("drawn_as_anchor")),
                span(final, lambda r: relative_anchor(r, base.get(r.get("seed"), {}))),
                span(final, lambda r: r.get("retain_acc")),
                span(final, lambda r: r.get("retain_acc_in")),
                span(final, lambda r: r.get("retain_acc_cross")),
                span(final, lambda r: r.get("unchanged")),
                span(final, lambda r: r.get("kid_ratio"), percent=False),
                f"{sum(bool(r.get('collapsed')) for r in later)} / {sum(bool(r.get('rejected')) for r in later)}"
                f" of {len(later)}",
            ]
        )
        for concept in final[0].get("forget_acc_each", {}):
            floor = final[0].get("floors", {}).get(concept)
            concepts_body.append(
                [
                    method,
                    f"{concept} → {anchors.get(concept) or DASH}",
                    pct(floor),
                    span(final, lambda r, c=concept: r.get("forget_acc_each", {}).get(c)),
                    "yes" if all(r["forget_acc_each"][concept] <= max(0.02, floor or 0.0) for r in final) else "no",
                    span(final, lambda r, c=concept: (r.get("drawn_as_anchor_each") or {}).get(c)),
                ]
            )
    header = [
        "method",
        "step",
        "seeds",
        "forget, worst concept",
        "concepts ≤ max(2%, anchor's confusion), per seed",
        "drawn as anchor (worst)",
        "drawn as anchor / anchor's own base rate (worst)",
        "retain (all)",
        "retain in-domain",
        "retain cross-domain",
        "unchanged",
        "KID ratio",
        "collapsed / rejected steps",
    ]
    concept_header = [
        "method",
        "concept → anchor",
        "anchor's confusion",
        "forget after the last step",
        "≤ max(2%, confusion) on every seed",
        "drawn as anchor",
    ]
    return "\n".join(
        [
            "## Protocol: test sequence, last step",
            "",
            "Mean over training seeds, with the min–max over seeds in brackets.",
            "",
            table(header, body),
            "",
            "### Every forgotten concept after the last step",
            "",
            table(concept_header, concepts_body),
            "",
        ]
    )


def dial_markdown(rows: list[dict], plots: Path) -> str:
    """dial.json: each adapter variant, trained once, evaluated at every intensity of the dial."""
    body = [
        [
            r["method"],
            f"{r['intensity']:g}"
            + (" (extrapolated)" if r.get("extrapolated") else "")
            + (" **deployed**" if r["intensity"] == r.get("config", {}).get("adapter.intensity") else ""),
            forget_cell(r),
            num(r.get("forget_prob"), ".4f"),
            pct(r.get("drawn_as_anchor")),
            pct(r.get("retain_acc")),
            pct(r.get("unchanged")),
            "yes" if r.get("collapsed") else "no",
        ]
        for r in rows
    ]
    header = ["method", "intensity", "forget acc", "judge's probability", "drawn as anchor", "retain", "unchanged"]
    first = rows[0]
    return "\n".join(
        [
            "## Protocol: the intensity dial",
            "",
            f"Each variant trained once on {first['concept']} → {first['anchor']} (the validation sequence's first "
            "request, its tuned setting), then evaluated at each intensity: 1 is the trained horizon, above 1 "
            "extrapolates past it, and the tuned setting is marked.",
            "",
            table(header + ["collapsed"], body),
            "",
        ]
    )


def grid_markdown(rows: list[dict], plots: Path) -> str:
    """grid.json: ODE adapters deployed on one solver step against their trained grid."""
    body = [
        [
            r["sequence"],
            r["method"],
            f"{r['deployment']} ({r['solver_steps']} {r['solver']} step{'s' if r['solver_steps'] > 1 else ''})",
            request_cell({"step": 1, **r}),
            forget_cell(r),
            num(r.get("forget_prob"), ".4f"),
            pct(r.get("drawn_as_anchor")),
            pct(r.get("retain_acc")),
            pct(r.get("unchanged")),
            num(r.get("eval_seconds"), ".0f"),
        ]
        for r in rows
    ]
    header = [
        "sequence",
        "method",
        "deployed on",
        "request",
        "forget acc",
        "judge's probability",
        "drawn as anchor",
        "retain",
        "unchanged",
        "evaluation s",
    ]
    return "\n".join(["## Protocol: one solver step against the trained grid", "", table(header, body), ""])


def text_tuning_markdown(rows: list[dict], plots: Path) -> str:
    """The text-to-image validation request (tuning-text.json), one row per method and configuration."""
    body = [
        [
            r["method"],
            config_cell(r.get("config", {})),
            request_cell(r),
            forget_cell(r),
            pct(r.get("held_out_forget_acc")),
            pct(r.get("retain_acc")),
            num(r.get("kid_ratio")),
            "**chosen**" if r.get("chosen") else "",
        ]
        for r in rows
        if r["step"] > 0
    ]
    header = ["method", "configuration", "request", "forget (prompts)", "forget (held-out)", "retain", "KID ratio", ""]
    return "\n".join(["## Text-to-image: tuning on the validation request", "", table(header, body), ""])


def anchors_markdown(rows: list[dict], plots: Path) -> str:
    """anchors.json: Lethe on the validation sequence under each automatic-anchor rule, last step."""
    body = []
    for rule in in_order(r["anchor_rule"] for r in rows):
        mine = [r for r in rows if r["anchor_rule"] == rule]
        last = max(mine, key=lambda r: r["step"])
        pairs = ", ".join(request_cell(r) for r in sorted(mine, key=lambda r: r["step"]) if r["step"] > 0)
        confusion = ", ".join(f"{c} {pct(f)}" for c, f in last.get("floors", {}).items())
        each = ", ".join(f"{c} {pct(a)}" for c, a in last.get("forget_acc_each", {}).items())
        body.append(
            [
                rule,
                pairs,
                confusion or DASH,
                each or DASH,
                pct(last.get("drawn_as_anchor")),
                pct(last.get("retain_acc_in")),
                pct(last.get("retain_acc")),
                pct(last.get("unchanged")),
            ]
        )
    header = [
        "anchor rule",
        "requests",
        "anchor's confusion",
        "forget (last step)",
        "drawn as anchor",
        "retain in-domain",
        "retain (all)",
        "unchanged",
    ]
    return "\n".join(["## Protocol: the automatic anchor's rule", "", table(header, body), ""])


def interval_cell(measure: dict | None) -> str:
    if not measure:
        return DASH
    return f"{pct(measure['acc'])} [{measure['low'] * 100:.1f}–{measure['high'] * 100:.1f}]"


def recovery_markdown(rows: list[dict], plots: Path, title: str = "Recovery attack (issue 13)") -> str:
    """recovery*.json: every forgotten concept of the final model, plain, under the embedding attack, and after
    the resurrection fine-tune, per method (the base first: the attack must succeed there), with the final
    model's retained accuracy relative to the base where it was measured."""
    body = [
        [
            r["method"],
            f"{r['concept']} → {r['anchor']}" if r.get("anchor") else r["concept"],
            interval_cell(r["plain"]),
            interval_cell(r["attack"]),
            interval_cell(r.get("resurrected")),
            pct(r["final_model"]["retain_acc"]) if r.get("final_model") else DASH,
            num(r["seconds"], ".0f"),
        ]
        for r in rows
    ]
    budget = rows[0]["budget"]
    header = ["model", "concept", "plain samples", "embedding attack", "after resurrection", "retained", "audit s"]
    commands = list(dict.fromkeys(r["command"].strip() for r in rows))
    return "\n".join(
        [
            f"## {title}",
            "",
            "; ".join(f"`{c}`" for c in commands) + f"; budget {json.dumps(budget)}; judged accuracy with 95% "
            f"Wilson intervals, {budget['samples']} samples each; retained: the final model's accuracy on every "
            "retained concept relative to the base's.",
            "",
            table(header, body),
            "",
        ]
    )


def long_markdown(
    rows: list[dict], plots: Path, name: str = "long-sequence", title: str = "Long sequence", floors: str = ""
) -> str:
    """<name>.json: per request and method, the model after the step and what the step cost; the floors are
    `floors`' (default <name>-floors.json: a rerun of a sequence shares its floors)."""
    groups = by_method_step(rows)
    out = [f"## {title} (issue 14)", ""]
    info = rows[-1]
    out += [
        f"`{info.get('command', 'python benchmarks/long_sequence.py')}` on {info.get('machine', '?')}; Lethe "
        f"consolidates every {info.get('every')} requests. Forget = worst judged accuracy over every concept "
        "forgotten so far; retained = relative to the base on the same seeds; sampling = wall time of a batch "
        "against the base's, median of back-to-back pairs; FLOPs = one denoising pass against the base's; step = "
        "replay + training (+ consolidation), evaluation excluded.",
        "",
    ]
    floors_file = floors or f"{name}-floors.json"
    floors = {r["concept"]: r["floor"] for r in load(plots.parent, floors_file) or []}
    header = ["method", "targets after the last request", "value", "met"]
    body = []
    for method, steps in groups.items():
        last = steps[max(steps)][0]
        first = steps[min(s for s in steps if s > 0)][0]
        worst_ratio = max(r[0].get("sampling_ratio") or 0 for s, r in steps.items() if s > 0)
        each = last.get("forget_acc_each") or {}
        over = {c: a for c, a in each.items() if a > max(0.02, floors.get(c, 0.0))}
        body += [
            [
                method,
                f"retained ≥ 97% of the base's (request {max(steps)})",
                pct(last.get("retain_acc")),
                "yes" if (last.get("retain_acc") or 0) >= 0.97 else "**no**",
            ],
            [
                "",
                "every forgotten concept ≤ its anchor's confusion"
                + (f" ({floors_file})" if floors else " (floors not measured: ≤ 2%)")
                + " or ≤ 2%",
                f"{len(each) - len(over)} of {len(each)}"
                + (": over " + ", ".join(f"{c} {pct(a)}" for c, a in over.items()) if over else ""),
                "yes" if not over else "**no**",
            ],
            [
                "",
                "sampling ≤ 1.15× the base's at every request",
                f"{worst_ratio:.3f}×",
                "yes" if worst_ratio <= 1.15 else "**no**",
            ],
            [
                "",
                "last request's step ≤ 1.2× the first's",
                f"{last['step_seconds']:.0f} s / {first['step_seconds']:.0f} s",
                "yes" if last["step_seconds"] <= 1.2 * first["step_seconds"] else "**no**",
            ],
        ]
    out += [table(header, body), ""]
    header = ["method", "request", "forget", "retained", "KID ×", "adapters", "sampling ×", "FLOPs ×", "step s", "note"]
    body = []
    for method, steps in groups.items():
        for step, (row, *_) in steps.items():
            if step == 0:
                continue
            note = ""
            if "consolidated" in row:
                note = (
                    f"folded {len(row['folded'])} ({row['consolidate_seconds']:.0f} s)"
                    if row["consolidated"]
                    else "fold rejected: " + "; ".join(row["consolidate_reasons"])
                )
            body.append(
                [
                    method,
                    f"{step}: {row['concept']} → {row['anchor']}",
                    pct(row.get("forget_acc")),
                    pct(row.get("retain_acc")),
                    num(row.get("kid_ratio")),
                    str(row.get("adapters", DASH)),
                    num(row.get("sampling_ratio"), ".3f"),
                    num(row.get("flops_ratio"), ".3f"),
                    num(row.get("step_seconds"), ".0f"),
                    note,
                ]
            )
    out += [table(header, body), "", image_link(plots / f"{name.replace('-', '_')}.png", title), ""]
    return "\n".join(out)


def long_tuning_markdown(rows: list[dict], plots: Path) -> str:
    """A tuning round on the long validation sequence (long-validation.json): every candidate's last request,
    the rule's choice marked when it has been made (long-validation-chosen.json, `--choose`)."""
    choice = load(plots.parent, "long-validation-chosen.json")
    chosen = {c["name"]: c for r in choice or [] for c in r["candidates"]}
    floors = {r["concept"]: r["floor"] for r in load(plots.parent, "long-validation-floors.json") or []}
    groups = by_method_step(rows)
    body = []
    for method, steps in groups.items():
        last = steps[max(steps)][0]
        later = [r for s, (r, *_) in steps.items() if s > 0]
        each = last.get("forget_acc_each") or {}
        within = sum(a <= max(0.02, floors.get(c, 0.0)) for c, a in each.items())
        worst = max(each, key=each.get) if each else None
        body.append(
            [
                method,
                config_cell(set_overrides(last.get("command", ""))),
                str(max(steps)),
                pct(last.get("retain_acc")),
                f"{within} of {len(each)}",
                f"{worst} {pct(each[worst])}" if worst else DASH,
                str(sum(bool(r.get("collapsed")) for r in later)),
                str(sum(bool(r.get("rejected")) for r in later)),
                "**chosen**" if chosen.get(method, {}).get("chosen") else "",
            ]
        )
    header = [
        "candidate",
        "setting",
        "requests",
        "retained",
        "within floor or ≤ 2%",
        "worst forgotten",
        "collapsed steps",
        "rejected steps",
        "",
    ]
    commands = in_order(r["command"] for r in rows if "command" in r)
    return "\n".join(
        [
            "## Long validation sequence: dfr-ft's second tuning round (issue 14)",
            "",
            "\n".join(f"    {c}" for c in commands),
            "",
            f"The rule's choice: `{choice[-1]['command']}`." if choice else "The rule has not been applied yet.",
            "",
            table(header, body),
            "",
        ]
    )


def world_markdown(rows: list[dict], plots: Path) -> str:
    """The embedded world per domain: the judge on real test images and the base's samples judged."""
    domains = sorted({d for r in rows for d in r["base_samples_by_domain"]})
    body = [
        [
            r["name"],
            str(r["concepts"]),
            *(pct(r["judge_on_real_by_domain"].get(d)) for d in domains),
            *(pct(r["base_samples_by_domain"].get(d)) for d in domains),
        ]
        for r in rows
    ]
    header = ["world", "concepts", *(f"judge on real: {d}" for d in domains), *(f"base samples: {d}" for d in domains)]
    info = rows[-1]
    return "\n".join(
        [
            "## Embedded world",
            "",
            "; ".join(f"`{r['command']}`" for r in rows) + f": {info['samples_per_concept']} base samples per "
            "concept judged by the row's own judge (the first row: the artefacts before commit 1310015); on "
            + info["machine"]
            + ".",
            "",
            table(header, body),
            "",
        ]
    )


def fulfilment_markdown(rows: list[dict], plots: Path) -> str:
    """The real pipeline on a sequence with automatic anchors: fulfilled requests and what the ladder cost."""
    body = [
        [
            r["sequence"],
            f"[{', '.join(r['escalation']['ladder'])}], {r['escalation']['attempts']} attempts",
            str(r["requests"]),
            f"{r['done']} ({pct(r['fulfilment_rate'])})",
            str(r["done_first_attempt"]),
            str(r["extra_attempts"]),
            f"{r['extra_minutes']:.1f}",
            f"{r['batch_minutes']:.1f}",
            "; ".join(f"{x['concept']} {x['state']} after {x['attempts']}" for x in r["rows"] if x["attempts"] > 1)
            or "-",
        ]
        for r in rows
    ]
    header = ["sequence", "ladder", "requests", "done", "on 1st attempt", "extra attempts", "extra min"]
    header += ["batch min", "laddered"]
    return "\n".join(
        [
            "## Fulfilment (issue 16)",
            "",
            "; ".join(dict.fromkeys(f"`{r['command']}`" for r in rows)) + f"; {rows[-1]['machine']}.",
            "",
            table(header, body),
            "",
        ]
    )


def export_markdown(rows: list[dict], plots: Path) -> str:
    """The three export formats of one text-to-image version, measured on the exported artefacts."""
    r = rows[-1]
    body = [
        [
            "diffusers (exact)",
            f"{exact['seconds']:.1f}",
            "bit-exact (tests/test_export.py)",
            "-",
            "-",
            "-",
            "-",
            f"{exact['megabytes']:.1f} MB folder",
            "written",
        ]
        for exact in r["exports"]
        if exact["format"] == "diffusers"
    ]
    for x in r["exports"]:
        if x["format"] == "diffusers":
            continue
        body.append(
            [
                x["format"],
                f"{x['seconds']:.0f}",
                pct(x["forget_max"]),
                pct(x["held_out_forget_max"]),
                f"{x['retain_vs_base']:.3f}",
                pct(x["table"]["recovery attack (max)"]),
                str(x["table"]["share of the stack's change left unexplained"]),
                f"LoRA {pct(x['lora_share'])} of the UNet" if x["format"] == "lora" else "plain UNet weights",
                "written" if x["passed"] else "refused: " + "; ".join(x["reasons"]),
            ]
        )
    header = [
        "format",
        "seconds",
        "forget (prompts, max)",
        "forget (held-out, max)",
        "retained vs base",
        "recovery (max)",
        "unexplained",
        "size",
        "gates",
    ]
    return "\n".join(
        [
            "## Export (issue 17)",
            "",
            f"Version {r['version']} of the embedded text-to-image model after the sequence's "
            f"{len(r['sequence'].split(','))} requests ({r['sequence']}; forgotten: {', '.join(r['forgotten'])}); "
            f"`{r['command'].strip()}`; {r['machine']}. Targets: exact export at most 120 s; "
            "LoRA and merged: forget at most 5% on the prompts and 10% on held-out paraphrases, retained at least "
            "0.97 of the base's, the LoRA at most 5% of the UNet.",
            "",
            table(header, body),
            "",
        ]
    )


def export_tuning_markdown(rows: list[dict], plots: Path) -> str:
    """export-validation.json: the distilled export's settings tried on the validation sequence, one run each."""
    header = ["configuration", "changed", "forget (prompts, max)", "forget (held-out, max)", "retained vs base"]
    header += ["recovery (max)", "unexplained", "LoRA / UNet", "seconds", "gates"]
    body = []
    shipped = next((r for r in rows if r["label"] == "shipped"), rows[0])["export_settings"]
    for r in rows:
        changed = {k: v for k, v in r["export_settings"].items() if shipped.get(k) != v}
        for x in (x for x in r["exports"] if x["format"] == "lora"):
            body.append(
                [
                    r["label"],
                    ", ".join(f"{k}={v}" for k, v in changed.items()) or "-",
                    pct(x["forget_max"]),
                    pct(x["held_out_forget_max"]),
                    f"{x['retain_vs_base']:.3f}",
                    pct(x["table"]["recovery attack (max)"]),
                    str(x["table"]["share of the stack's change left unexplained"]),
                    pct(x["lora_share"], 2),
                    f"{x['seconds']:.0f}",
                    "pass" if x["passed"] else "refused: " + "; ".join(x["reasons"]),
                ]
            )
    first = rows[0]
    return "\n".join(
        [
            "## Export: tuning on the validation sequence (issue 17)",
            "",
            f"Version {first['version']} after the validation sequence ({first['sequence']}; forgotten: "
            f"{', '.join(first['forgotten'])}), which shares no concept with the test sequence; one row per "
            f"configuration, in the order run; `{first['command'].strip()}` with each row's `--set`; "
            f"{first['machine']}.",
            "",
            table(header, body),
            "",
        ]
    )


def markdown(results_dir: Path = RESULTS) -> str:
    """Markdown sections for BENCHMARKS.md, one per result file present (plots are linked, not written)."""
    results_dir = Path(results_dir)
    plots = results_dir / "plots"
    sections = []
    ten = partial(continual_markdown, title="10-request sequence", prefix="continual10")
    for name, render in (
        ("continual.json", continual_markdown),
        ("continual-10.json", ten),
        ("floors-10.json", floors_markdown),
        ("floors.json", floors_markdown),
        ("sweep.json", sweep_markdown),
        ("ablation.json", ablation_markdown),
        ("tuning.json", tuning_markdown),
        ("test.json", partial(continual_markdown, title="Protocol: test sequence", prefix="test")),
        ("test.json", protocol_markdown),
        ("dial.json", dial_markdown),
        ("grid.json", grid_markdown),
        ("anchors.json", anchors_markdown),
        ("recovery.json", recovery_markdown),
        ("recovery-defence.json", partial(recovery_markdown, title="Recovery attack: adversarial training")),
        ("recovery-text.json", partial(recovery_markdown, title="Recovery attack: text-to-image")),
        ("tuning-text.json", text_tuning_markdown),
        ("continual-text.json", text_markdown),
        ("long-sequence.json", long_markdown),
        ("long-sequence-30.json", partial(long_markdown, name="long-sequence-30", title="Thirty-request sequence")),
        (
            "long-sequence-30-share.json",
            partial(
                long_markdown,
                name="long-sequence-30-share",
                title="Thirty-request sequence, folds drawing half their rows from forgotten concepts",
                floors="long-sequence-30-floors.json",
            ),
        ),
        (
            "long-sequence-30-attack.json",
            partial(
                long_markdown,
                name="long-sequence-30-attack",
                title="Thirty-request sequence, folds as shipped (half their rows forgotten, two attack rounds)",
                floors="long-sequence-30-floors.json",
            ),
        ),
        (
            "long-sequence-30-confusion.json",
            partial(
                long_markdown,
                name="long-sequence-30-confusion",
                title="Thirty-request sequence, per-concept forget gates and a wait after a rejected fold",
                floors="long-sequence-30-floors.json",
            ),
        ),
        ("long-validation.json", long_tuning_markdown),
        ("world.json", world_markdown),
        ("fulfilment.json", fulfilment_markdown),
        ("export-validation.json", export_tuning_markdown),
        ("export.json", export_markdown),
    ):
        if name == "floors.json" and load(results_dir, "floors-10.json"):
            continue  # the ten-request floors include the five-request ones
        rows = load(results_dir, name)
        if rows:
            sections.append(render(rows, plots))
    return "\n".join(sections) if sections else "_No benchmark results found._\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS), help="folder holding the benchmark JSON files")
    parser.add_argument("--markdown", default=None, help="write the Markdown here instead of printing it")
    args = parser.parse_args()
    results_dir = Path(args.results)
    plot_all(results_dir)
    text = markdown(results_dir)
    if args.markdown:
        Path(args.markdown).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
