"""The report's PNG plots: Fig. 7 (routing curves), Fig. 4 (score bins), Fig. 12 (per-portion curves)
and Fig. 8(f) (per-split curves), drawn from the numbers of :func:`prp.eval.report.compute_report`.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch), so this works
headless and leaves any caller's backend alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ACCURACY_YLIM = (-2.0, 102.0)  # accuracy axes in %, the same on every panel

PORTION_LABELS = {
    "overall": "overall",
    "draft_on_draft": "draft on draft split",
    "target_on_target": "target on target split",
    "target_on_draft": "target on draft split",
    "draft_on_target": "draft on target split",
}


def ok_signals(data: dict) -> list[str]:
    """The signals the report could compute (status ``ok``), in report order."""
    return [k for k, v in data["signals"].items() if v["status"] == "ok"]


def _figure(n_panels: int, *, width: float = 4.0, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(max(n_panels, 1), 3)
    rows = -(-max(n_panels, 1) // cols)
    fig = Figure(figsize=(width * cols, height * rows))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(n_panels, 1))]
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def write_plots(data: dict, *, out_dir: Path, p_t_grid) -> dict[str, Path]:
    """Write the PNG plots; returns ``{name: path}``."""
    x = 100 * np.asarray(p_t_grid, dtype=float)
    plots = {"routing_curves": _plot_routing(data, x, out_dir / "routing_curves.png")}
    ok = ok_signals(data)
    if ok:
        plots["score_bins"] = _plot_bins(data, ok, out_dir / "score_bins.png")
        plots["portion_curves"] = _plot_portions(data, ok, x, out_dir / "portion_curves.png")
    if data["splits"] and ok:
        plots["per_split"] = _plot_splits(data, ok, x, out_dir / "per_split_curves.png")
    return plots


def _pct(values) -> np.ndarray:
    return 100 * np.array([math.nan if v is None else v for v in values], dtype=float)


def _plot_routing(data, x, path) -> Path:
    fig, (ax,) = _figure(1, width=6.0, height=4.5)
    for name in ok_signals(data):
        b = data["signals"][name]
        ax.plot(x, _pct(b["curve"]), label=f"{name} (AUC {b['auc']:.2f})")
    ax.plot(x, _pct(data["random"]["curve"]), "--", color="red", label=f"random (AUC {data['random']['auc']:.2f})")
    ax.plot(
        x,
        _pct(data["oracle"]["curve"]),
        ":",
        color="black",
        label=f"oracle (AUC {data['oracle']['auc']:.2f})",
    )
    ax.axhline(100 * data["draft_accuracy"], color="grey", lw=0.8, label="draft only")
    ax.axhline(100 * data["target_accuracy"], color="grey", lw=0.8, ls="-.", label="target only")
    ax.set(xlabel="p_t: instances routed to target (%)", ylabel="accuracy (%)", title=data["title"])
    ax.legend(fontsize=7)
    return _save(fig, path)


def _plot_bins(data, names, path) -> Path:
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names, strict=False):
        b = data["signals"][name]["bins"]
        edges = np.asarray(b["edges"])
        centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        ax.bar(centers, b["count"], width=0.9 * width, color="tab:purple", alpha=0.6)
        ax.set(xlabel=f"{name} score", ylabel="count", title=name)
        twin = ax.twinx()
        twin.plot(centers, _pct(b["accuracy"]), "o-", color="tab:orange")
        twin.set(ylabel="draft accuracy (%)", ylim=(-5, 105))
    return _save(fig, path)


def _plot_portions(data, names, x, path) -> Path:
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names, strict=False):
        for key, label in PORTION_LABELS.items():
            ax.plot(x, _pct(data["signals"][name]["portions"][key]), label=label)
        ax.plot(x, _pct(data["random"]["curve"]), "--", color="red", label="random")
        ax.set(xlabel="p_t (%)", ylabel="accuracy (%)", title=f"{name}: per-portion accuracy", ylim=ACCURACY_YLIM)
        ax.legend(fontsize=6)
    return _save(fig, path)


def _plot_splits(data, names, x, path) -> Path:
    splits = data["splits"]
    fig, axes = _figure(len(splits))
    for ax, split in zip(axes, splits, strict=False):
        first = data["signals"][names[0]]["per_split"][split]
        for name in names:
            ax.plot(x, _pct(data["signals"][name]["per_split"][split]["routing"]), label=name)
        ax.plot(x, _pct(first["random"]), "--", color="red", label="random")
        # one fixed axis for every panel: auto-scaling drew level 1's 98.5-100 and level 4's 0-2 as
        # the same height, hiding which splits the router helps
        ax.set(xlabel="p_t (%)", ylabel="accuracy (%)", title=f"split {split} (n={first['n']})", ylim=ACCURACY_YLIM)
        ax.legend(fontsize=6)
    return _save(fig, path)
