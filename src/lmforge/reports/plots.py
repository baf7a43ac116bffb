"""The figures of a run and a sweep, drawn headless.

matplotlib's object-oriented API on the Agg canvas (``FigureCanvasAgg``): no display is needed, no
``pyplot`` state is touched (a notebook's backend stays as it was), and matplotlib is imported only when
a figure is drawn, never at ``import lmforge``. Every function takes plain data (lists, dicts) and
returns a ``Figure``; :func:`save` writes it as a PNG, :func:`rgb_array` gives the pixels (TensorBoard).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

DPI = 100
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def figure(width: float = 6.4, height: float = 4.0) -> Any:
    """A new figure on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path) -> Path:
    """``fig`` as a PNG at ``path`` (written to a temporary name first, so a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)  # every figure lays itself out (tight_layout): no second draw pass
    tmp.replace(path)
    return path


def rgb_array(fig: Any) -> Any:
    """The figure's pixels, ``(height, width, 3)`` uint8 (for ``SummaryWriter.add_image(..., dataformats="HWC")``)."""
    import numpy as np

    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average (shorter windows at the ends): no lag behind the raw curve, unlike an EMA."""
    half = max(0, window // 2)
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half): i + half + 1]
        out.append(sum(part) / len(part))
    return out


def _finite(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list, list]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and isinstance(y, (int, float)) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def loss_figure(train: Mapping[str, Sequence[float]], val: Sequence[Mapping[str, float]], title: str = "loss",
                val_key: str = "val/loss") -> Any:
    """Training loss (each logged step, with a smoothed line when there are many) and validation loss, by step."""
    fig = figure()
    ax = fig.add_subplot(1, 1, 1)
    steps, losses = _finite(train.get("step", []), train.get("loss", []))
    if steps:
        many = len(steps) > 30
        ax.plot(steps, losses, color=_COLORS[0], alpha=0.35 if many else 1.0, lw=1,
                label="train" if not many else "train (each log step)", marker="" if len(steps) > 1 else "o")
        if many:
            window = max(3, len(steps) // 15)
            ax.plot(steps, smooth(losses, window), color=_COLORS[0], lw=2, label=f"train (mean of {window | 1} points)")
    vs, vl = _finite([r.get("step") for r in val], [r.get(val_key) for r in val])
    if vs:
        ax.plot(vs, vl, color=_COLORS[1], marker="o", ms=4, lw=1.5, label="validation")
    if not steps and not vs:
        _empty(ax, "no loss logged yet")
    else:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def metrics_figure(val: Sequence[Mapping[str, float]], keys: Sequence[str], title: str = "validation metrics",
                   headline: str | None = None) -> Any:
    """One small panel per validation metric (their scales differ: accuracy, MSE, perplexity), by step."""
    keys = list(keys)
    n = max(1, len(keys))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = figure(3.2 * cols + 0.4, 2.5 * rows + 0.5)
    if not keys:
        _empty(fig.add_subplot(1, 1, 1), "no validation metric yet")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs, ys = _finite([r.get("step") for r in val], [r.get(key) for r in val])
        if not xs:
            _empty(ax, "not logged")
        else:
            ax.plot(xs, ys, color=_COLORS[i % len(_COLORS)], marker="o", ms=3, lw=1.5)
            ax.annotate(f"{ys[-1]:.4g}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        name = key + ("  (score)" if headline and key == headline else "")
        ax.set_title(name, fontsize=9, fontweight="bold" if headline and key == headline else "normal")
        if i >= n - cols:
            ax.set_xlabel("optimizer step", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def lr_figure(lr: Mapping[str, Any], title: str = "learning rate") -> Any:
    """The learning rate of each optimizer parameter group by step; groups with the same schedule drawn once."""
    fig = figure(6.4, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    steps = list(lr.get("step", []))
    series: dict[str, list] = dict(lr.get("values", {}))
    shown: list[tuple[str, list]] = []
    for name, values in series.items():
        if not any(values == v for _, v in shown):
            shown.append((name, values))
    if not steps or not shown:
        _empty(ax, "no learning rate logged yet")
    else:
        for i, (name, values) in enumerate(shown):
            ax.plot(steps[:len(values)], values, color=_COLORS[i % len(_COLORS)], lw=1.5,
                    label=name if len(shown) > 1 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.grid(alpha=0.3)
        if len(shown) > 1:
            ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _short(name: str, n: int = 18) -> str:
    name = str(name)
    return name if len(name) <= n else name[: n - 1] + "…"


def confusion_figure(matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str = "confusion matrix") -> Any:
    """Counts of (true label, predicted label), with each row's share as the colour; label names on both axes."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    k = m.shape[0]
    size = min(12.0, max(4.0, 0.5 * k + 2.5))
    fig = figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true label's examples")
    names = [_short(x) for x in labels]
    ax.set_xticks(range(k), names, rotation=45 if k > 3 or max(map(len, names), default=0) > 8 else 0,
                  ha="right" if k > 3 else "center", fontsize=8 if k > 10 else 9)
    ax.set_yticks(range(k), names, fontsize=8 if k > 10 else 9)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8 if k > 10 else 10,
                        color="white" if share[i, j] > 0.5 else "black")
    correct = float(np.trace(m))
    total = float(m.sum())
    ax.set_title(f"{title}\n{int(correct)} of {int(total)} correct" if total else title, fontsize=10)
    fig.tight_layout()
    return fig


def bars_figure(values: Mapping[str, float], title: str, xlabel: str, limit: tuple[float, float] | None = (0.0, 1.0)
                ) -> Any:
    """Horizontal bars, one per name, with the value written at the end of each bar."""
    names = list(values)
    fig = figure(6.4, max(2.0, 0.45 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    if not names:
        _empty(ax, "nothing to show")
    else:
        ys = list(range(len(names)))
        vals = [float(values[n]) for n in names]
        ax.barh(ys, vals, color=[_COLORS[i % len(_COLORS)] for i in ys])
        ax.set_yticks(ys, [_short(n, 24) for n in names])
        ax.invert_yaxis()
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
        if limit:
            ax.set_xlim(limit[0], limit[1] * 1.12)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def sweep_figure(labels: Sequence[str], values: Sequence[float | None], metric: str, mode: str,
                 param: str | None = None, param_values: Sequence[Any] | None = None, title: str = "sweep") -> Any:
    """A sweep at a glance: the metric against the swept parameter when one numeric parameter varies,
    else one bar per job. The jobs come best first; the first one is highlighted as the best."""
    fig = figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    done = [(lab, v, p) for lab, v, p in zip(labels, values, param_values or [None] * len(labels))
            if isinstance(v, (int, float)) and math.isfinite(v)]
    numeric = param is not None and done and all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                                 for _, _, p in done)
    if not done:
        _empty(ax, "no job has finished with the metric")
    elif numeric:
        pts = sorted((p, v) for _, v, p in done)
        ax.plot([p for p, _ in pts], [v for _, v in pts], color=_COLORS[0], marker="o", lw=1.5)
        ps = [p for p, _ in pts]
        if min(ps) > 0 and max(ps) / min(ps) >= 10:
            ax.set_xscale("log")
        _, best_v, best_p = done[0]
        ax.plot([best_p], [best_v], marker="*", ms=14, color=_COLORS[1], ls="", label=f"best: {param}={best_p:g}")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ys = list(range(len(done)))
        vals = [v for _, v, _ in done]
        ax.barh(ys, vals, color=[_COLORS[1] if i == 0 else _COLORS[0] for i in ys])
        ax.set_yticks(ys, [_short(lab, 48) for lab, _, _ in done], fontsize=8)
        ax.invert_yaxis()
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 0.05
        ax.set_xlim(min(0.0, lo) if lo >= 0 and lo - pad < 0 else lo - pad, hi + pad)
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v:.4g}", va="center", fontsize=8)
        ax.set_xlabel(f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)")
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
