"""FROC figures (matplotlib's object API with the Agg canvas: no pyplot, no global backend).

The one home of the FROC figures: one result with its CI band (``froc.png``), the folds of a
cross-validation (``froc_folds.png``) and several runs side by side (the demo report).
"""
import logging
from typing import Any, Mapping, Optional, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..fileio import atomic_path

__all__ = ["plot_froc", "plot_folds", "plot_froc_runs"]

logger = logging.getLogger(__name__)

# The study's headline operating point, marked on every figure.
_MARK_RATE = "3.4"


def _curve_xy(curve: Mapping[str, Any], x_max: float) -> tuple:
    """Points of a stored curve from the origin, extended flat to ``x_max`` (log-x friendly)."""
    fp = np.r_[0.0, np.asarray(curve["fp_per_case"], dtype=np.float64)]
    sens = np.r_[0.0, [np.nan if s is None else s for s in curve["sensitivity"]]]
    if fp[-1] < x_max:
        fp, sens = np.r_[fp, x_max], np.r_[sens, sens[-1]]
    return fp, sens


def _new_axes(title: str):
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("log")
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("False positives per case")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title)
    ticks = [0.125, 0.25, 0.5, 1, 2, 4, 8]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _mark(ax, fp: float, sens: Optional[float], color: str) -> None:
    if sens is None or sens != sens:
        return
    ax.plot([fp], [sens], marker="o", color=color, zorder=5)
    label = f"{sens:.3f} @ {fp:g} FP"
    ax.annotate(label, (fp, sens), textcoords="offset points", xytext=(6, -14), color=color)


def _save(fig: Figure, path: str) -> None:
    """Save atomically (temporary file + os.replace)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def plot_froc(result: Mapping[str, Any], path: str) -> None:
    """FROC curve with its bootstrap 95% band, log FP axis, the 3.4 FP point marked, and one
    dashed curve per mass-size band with masses (``sensitivity_by_size``).

    Args:
        result: a ``compute_froc`` result (``froc.json``).
        path: PNG file to write.
    """
    params = result.get("params", {})
    cpm = result.get("cpm")
    cpm_txt = f"; CPM {cpm:.3f}" if cpm is not None and cpm == cpm else ""
    fig, ax = _new_axes(
        f"FROC ({result['num_cases']} cases, {result['num_lesions']} masses{cpm_txt})"
    )
    ci = (result.get("ci95") or {}).get("curve")
    if ci:
        lo = np.array([np.nan if v is None else v for v in ci["lower"]], dtype=np.float64)
        hi = np.array([np.nan if v is None else v for v in ci["upper"]], dtype=np.float64)
        label = "95% CI (bootstrap over cases)"
        ax.fill_between(ci["fp_per_case"], lo, hi, step="post", alpha=0.25, color="C0", label=label)
    fp, sens = _curve_xy(result["curve"], 16.0)
    ax.plot(fp, sens, color="C0", label=f"{params.get('hit', '')} curve")
    _plot_size_bands(ax, result.get("sensitivity_by_size") or {})
    _mark(ax, float(_MARK_RATE), result["sensitivity_at"].get(_MARK_RATE), "C3")
    ax.legend(loc="upper left", fontsize="small")
    _save(fig, path)


def _plot_size_bands(ax, by_size: Mapping[str, Mapping[str, Any]]) -> None:
    """Dashed curve of each mass-size band that has masses (FP axis: the whole cohort's)."""
    for k, (name, band) in enumerate(by_size.items()):
        if band["num_lesions"]:
            fp, sens = _curve_xy(band["curve"], 16.0)
            label = f"{name} mm ({band['num_lesions']} masses)"
            ax.plot(fp, sens, color=f"C{k + 4}", ls="--", lw=1, label=label)


def plot_folds(agg: Mapping[str, Any], path: str) -> None:
    """Every fold's curve, the mean curve across folds, and the pooled curve.

    Args:
        agg: an ``aggregate_folds`` result.
        path: PNG file to write.
    """
    fig, ax = _new_axes(f"FROC over {len(agg['folds'])} folds")
    for k, curve in enumerate(agg.get("fold_curves", [])):
        fp, sens = _curve_xy(curve, 16.0)
        ax.plot(fp, sens, color=f"C{k % 10}", alpha=0.45, lw=1, label=curve.get("name"))
    mean = agg["mean_curve"]
    label = "mean across folds"
    ax.step(mean["fp_per_case"], mean["sensitivity"], where="post", color="k", lw=2, label=label)
    pooled = agg.get("pooled")
    if pooled:
        fp, sens = _curve_xy(pooled["curve"], 16.0)
        ax.plot(fp, sens, color="k", ls="--", lw=1.5, label="pooled cases")
    _mark(ax, float(_MARK_RATE), agg["mean"]["sensitivity_at"].get(_MARK_RATE), "C3")
    ax.legend(loc="upper left", fontsize="small")
    _save(fig, path)


def plot_froc_runs(
    runs: Mapping[str, Mapping[str, Any]],
    path: str,
    reference: Optional[Tuple[float, float, str]] = None,
    title: str = "FROC, validation cases",
) -> None:
    """Several runs' FROC curves on one log-FP axis, with an optional reference point.

    Args:
        runs: ``{run name: compute_froc result}`` in legend order.
        path: PNG file to write.
        reference: ``(FP per case, sensitivity, label)`` drawn as a star, e.g. a published
            operating point.
        title: figure title.
    """
    fig, ax = _new_axes(title)
    for k, (name, res) in enumerate(runs.items()):
        fp, sens = _curve_xy(res["curve"], 16.0)
        ax.plot(fp, sens, color=f"C{k % 10}", label=name)
    if reference is not None:
        fp_ref, sens_ref, label = reference
        label = f"{label}: {sens_ref:g} @ {fp_ref:g} FP/case"
        ax.plot([fp_ref], [sens_ref], "k*", ms=10, label=label)
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
