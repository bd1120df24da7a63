"""What every figure of ``comem figures`` shares: a headless matplotlib, and the caption
and file formats of :func:`_save`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: plt.Figure, out: Path, name: str, caption: str) -> list[Path]:
    """Caption at the bottom (one line per ``\\n``, wrapped to the figure's width so
    none is cut off), then PNG and PDF."""
    import textwrap

    width = int(fig.get_figwidth() * 72 / 7 * 1.6)  # characters of 7-pt text per line
    lines = [w for part in caption.split("\n") for w in textwrap.wrap(part, width)]
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=7, color="0.35", ha="left", va="bottom")
    # a 7-pt line is about 0.125 inch tall
    fig.tight_layout(rect=(0, 0.01 + 0.125 * len(lines) / fig.get_figheight(), 1, 1))
    from calibration.outputs import refuse_foreign_figure, write_atomic

    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    try:
        for p in paths:  # whole, and over no file of the user's (only a figure drawn here)
            refuse_foreign_figure(p, "--out")
            write_atomic(p, lambda tmp: fig.savefig(tmp, dpi=110), "figure")
    finally:
        plt.close(fig)
    return paths
