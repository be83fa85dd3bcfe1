"""Training curves as a PNG (matplotlib, Agg: no display needed).

The plotted series are also written into the PNG's text metadata (key `aiops:series`, JSON), so a
reader of the file alone can check that the picture shows exactly the run's metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from aiops.training.metrics import Point

from aiops.errors import UsageError

METADATA_KEY = "aiops:series"
MAX_PANELS = 9
STEP_NAMES = ("epoch", "step", "iteration")  # counters: used as the x axis, not drawn as curves


def plot_curves(curves: dict[str, list[Point]], out: Path, *, title: str) -> list[str]:
    """Draw one panel per metric (at most MAX_PANELS); returns the metric names drawn."""
    if out.suffix.lower() != ".png":  # bad input is refused before matplotlib loads (~1 s)
        raise UsageError(f"--plot {out}: give a .png file name.")
    if not curves:
        raise UsageError(f"{title}: no metric has more than one sample, so there is no curve to draw.")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from aiops.extras import require_extra

        raise require_extra("plot", "plotting", missing="matplotlib") from None
    step = next((s for s in STEP_NAMES if s in curves), None)
    names = sorted(n for n in curves if n != step)[:MAX_PANELS] or sorted(curves)[:MAX_PANELS]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    series: dict[str, list[list[float]]] = {}
    for ax, name in zip(axes.flat, names, strict=False):
        points = curves[name]
        if step is not None and name != step and len(curves[step]) == len(points):
            xs, label = [p.value for p in curves[step]], step
        else:
            xs, label = [float(i) for i in range(1, len(points) + 1)], "sample"
        ys = [p.value for p in points]
        ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
        series[name] = [[x, y] for x, y in zip(xs, ys, strict=True)]
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={METADATA_KEY: json.dumps(series)})
    plt.close(fig)
    return names
