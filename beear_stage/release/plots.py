"""PNG plots of a release candidate: BEEAR losses per round and ASR before/after mitigation.

API:
    plot_losses(history) -> Figure           inner / outer-safe / outer-perf loss, and ||delta|| per round
                                             relative to its bound `delta_max_norm` (1 = on the bound)
    plot_asr(before, after) -> Figure        grouped bars: baseline vs candidate for every rate metric
    save_figure(fig, path) -> Path           PNG, 100 dpi
    save_plots(out_dir, history, before, after) -> list[Path]
        writes `loss_curves.png` (skipped when `history` is empty) and `asr_before_after.png`

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas, without pyplot:
no global figure state, no display backend, safe in worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOSS_KEYS = (
    "inner_loss",
    "outer_safe_loss",
    "outer_perf_loss",
    "consistency_loss",
    "consistency_loss_adv",
)  # BEEAR, CROW
# rate metrics shown in the ASR plot, in this order; trigger metrics are inserted after asr_clean
RATE_KEYS = ("asr_clean", "embedding_attack_asr", "benign_nonrefusal")


def plot_losses(history: Sequence[Mapping[str, Any]]):
    """Loss curves of a BEEAR run: one point per round (x = `round`).

    Args:
        history: per-round dicts with `round`, `inner_loss`, `outer_safe_loss`, `outer_perf_loss`,
            `delta_norm` (missing keys are skipped).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    ax_loss, ax_delta = fig.subplots(1, 2)
    rounds = [h.get("round", h.get("step", i)) for i, h in enumerate(history)]
    unit = "step" if history and "step" in history[0] else "round"
    for key in LOSS_KEYS:
        points = [(r, h[key]) for r, h in zip(rounds, history, strict=True) if h.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points, strict=True), marker="o", label=key)
    ax_loss.set_xlabel(unit)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("BEEAR losses")
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    _plot_delta(ax_delta, rounds, history)
    fig.tight_layout()
    return fig


def _plot_delta(ax, rounds: Sequence[Any], history: Sequence[Mapping[str, Any]]) -> None:
    """||delta|| per round as a share of its bound (`delta_bound` = `delta_max_norm`), on a fixed
    0-1.1 axis: the projection keeps delta on the bound, and an auto-scaled axis would blow its
    float noise (1.5 +- 1e-7) up into a jagged curve. Unbounded runs show the norm from zero."""
    rows = [(r, h) for r, h in zip(rounds, history, strict=True) if h.get("delta_norm") is not None]
    if not rows:
        ax.set_axis_off()
        return
    bounded = all(h.get("delta_bound") for _, h in rows)
    values = [h["delta_norm"] / h["delta_bound"] if bounded else h["delta_norm"] for _, h in rows]
    ax.plot([r for r, _ in rows], values, marker="o", color="tab:purple")
    ax.set_xlabel("round")
    if bounded:
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="bound (delta_max_norm)")
        ax.set_ylim(0.0, 1.1)
        ax.set_ylabel("||delta|| / bound")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("||delta|| relative to its bound")
    else:
        ax.set_ylim(0.0, max(values) * 1.1 or 1.0)
        ax.set_ylabel("||delta|| / (sqrt(hidden) RMS(h_l))")
        ax.set_title("||delta|| after the inner level (unbounded)")


def plot_asr(before: Mapping[str, Any], after: Mapping[str, Any]):
    """Grouped bars of every rate metric (ASR, triggered ASR, non-refusal) before and after mitigation."""
    from matplotlib.figure import Figure

    triggers = sorted(k for k in set(before) | set(after) if k.startswith("asr_trigger:"))
    keys = [RATE_KEYS[0], *triggers, *RATE_KEYS[1:]]
    keys = [k for k in keys if before.get(k) is not None or after.get(k) is not None]
    fig = Figure(figsize=(max(5.0, 1.3 * len(keys) + 2), 3.4))
    ax = fig.subplots()
    width = 0.38
    xs = range(len(keys))
    for offset, label, metrics in ((-width / 2, "before", before), (width / 2, "after", after)):
        values = [float(metrics.get(k) or 0.0) for k in keys]
        ax.bar([x + offset for x in xs], values, width, label=label)
    ax.set_xticks(list(xs), keys, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate")
    ax.set_title("Attack success and benign non-refusal, before vs after")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as PNG to `path` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def save_plots(
    out_dir: str | Path,
    history: Sequence[Mapping[str, Any]],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> list[Path]:
    """Write the candidate's plots into `out_dir`; returns the PNG paths written."""
    out_dir = Path(out_dir)
    paths = []
    if history:
        paths.append(save_figure(plot_losses(history), out_dir / "loss_curves.png"))
    paths.append(save_figure(plot_asr(before, after), out_dir / "asr_before_after.png"))
    return paths
