"""The figure of ``comem theory SCENARIO --figure``: each summarizing architecture's speedup
over full context against the number of agents, one curve per k."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def speedup_figure(result: dict[str, Any], path: Path) -> Path:
    """One panel per summarizing architecture (``result``: ``evaluate(curves=True)``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["k_scan"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    agents, fc_kv = result["shape"]["agents"], result["fc"]["kv_bound_agents"]
    for ax, name in zip(axes[0], names, strict=True):
        kind = next(r["kind"] for r in result["rows"] if r["architecture"] == name)
        own = next(r["k"] for r in result["rows"] if r["architecture"] == name)
        letter = "R" if kind == "kso-authors" else "k"
        if not result["k_scan"][name]:  # a task too short for any k to summarize
            ax.text(
                0.5,
                0.5,
                f"no {letter} below the task's {result['shape']['steps']} steps\nmakes a summary",
                transform=ax.transAxes,
                ha="center",
                va="center",
            )
            ax.set_title(f"{name} ({kind})", fontsize=9)
            continue
        for r in result["k_scan"][name]:
            y = r["speedup_by_agents"]
            ax.plot(range(1, len(y) + 1), y, lw=2.2 if r["k"] == own else 1.1,
                    label=f"{letter} = {r['k']} ({r['resolve_pp']:+.1f} pp)")  # fmt: skip
        ax.axhline(1.0, color="0.4", lw=0.8)
        ax.axvline(agents, color="k", ls=":", lw=0.8)
        ax.axvline(fc_kv + 0.5, color="C3", ls="--", lw=0.8)
        ax.axvspan(fc_kv + 0.5, max(len(r["speedup_by_agents"]) for r in result["k_scan"][name]),
                   color="C3", alpha=0.06, lw=0)  # fmt: skip
        ax.text(agents, ax.get_ylim()[1], f" {agents} agents", fontsize=7, va="top")
        ax.text(fc_kv + 0.5, ax.get_ylim()[0], " FC's KV limit", fontsize=7, color="C3",
                va="bottom")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("agents (in all; lockstep)")
        ax.set_ylabel("speedup over FC: FC's step latency / this one's")
        ax.set_title(f"{name} ({kind})", fontsize=9)
        ax.legend(fontsize=7, title="resolve rate vs FC", title_fontsize=7)
    fig.suptitle(suptitle(result, len(names)), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def suptitle(result: dict[str, Any], panels: int) -> str:
    """The figure's title, wrapped to its width (one 5.5-inch panel holds ~95 characters)."""
    import textwrap

    text = (
        f"closed forms on {result['scenario']}: past FC's KV limit FC preempts, which the"
        " forms do not price (FC's step latency there is a lower bound)"
    )
    return "\n".join(textwrap.wrap(text, width=95 * panels))
