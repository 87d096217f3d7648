"""Draw ``bigops.plot.data.FigureData`` as a PNG with matplotlib's Agg canvas (no display, no pyplot state:
a ``Figure`` of its own per call), written atomically: a reader never sees half a picture."""

from __future__ import annotations

import io
from pathlib import Path

from bigops.plot.data import PANELS, TITLES, FigureData
from trainer.rundir import atomic_write

MARKER_STYLE = {"incident": ("tab:orange", ":"), "rollback": ("tab:red", "--"), "restart": ("tab:purple", "--"),
                "kill": ("black", "-.")}
"""Colour and line style of each marker kind (the legend of the top panel names them)."""
LINE_STYLE = {"train": {"linewidth": 1.2}, "rolled back": {"linewidth": 0.8, "alpha": 0.35},
              "validation": {"linewidth": 1.0, "linestyle": "--", "marker": "o", "markersize": 3}}
"""How each kind of series is drawn (in its source's colour): a rolled-back stretch faint, validation dashed."""
LOG_SCALE = ("lr",)
"""Panels drawn on a log y axis when all their values are > 0 (a warmup spans orders of magnitude)."""


def png_bytes(data: FigureData, width_in: float = 11.0, panel_height_in: float = 2.6, dpi: int = 100) -> bytes:
    """The picture: one panel per entry of ``data.panels`` (in ``PANELS`` order), a shared step axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k in PANELS if k in data.panels] or ["loss"]
    fig = Figure(figsize=(width_in, panel_height_in * len(keys)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        lines = data.panels.get(key, [])
        for s in lines:
            ax.plot(s.steps, s.values, label=s.label, color=f"C{s.source}", **LINE_STYLE[s.kind])
        seen = set()
        for m in data.markers:
            colour, style = MARKER_STYLE.get(m.kind, ("grey", ":"))
            ax.axvline(m.step, color=colour, linestyle=style, linewidth=1.0,
                       label=None if m.kind in seen or ax is not axes[0] else m.kind)
            seen.add(m.kind)
        if key in LOG_SCALE and lines and all(v > 0 for s in lines for v in s.values):
            ax.set_yscale("log")
        ax.set_ylabel(TITLES[key])
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    if not data.panels:
        axes[0].text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=axes[0].transAxes)
    axes[0].set_title(data.title)
    axes[-1].set_xlabel("step")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_png(data: FigureData, path: Path) -> None:
    png = png_bytes(data)
    atomic_write(Path(path), lambda handle: handle.write(png))
