"""The theory figures of ``comem figures``: the closed forms (speedup by k and load,
the KV crossover), the stall bounds against simulated stalls, and the fitted
effectiveness model (its frontier, and its fit to the runs it was fitted on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from calibration import LatencyModel  # noqa: E402
from calibration.surrogate import fit_surrogate  # noqa: E402
from comem.figure_common import _save  # noqa: E402
from comem.validation import swap_stall_means  # noqa: E402
from theory.bounds import jensen_lower, scarf_upper  # noqa: E402
from theory.single_agent import AgentParams, lockstep_coefficients, step_timeline  # noqa: E402


def fig_theory_speedup(out: Path, quick: bool) -> list[Path]:
    """Theory: KSO and CP vs FC, by k and by concurrency (lockstep, no KV limit)."""
    coeffs = fit_surrogate(LatencyModel("deepswe", "h100_sxm", 4, "bf16")).coefficients
    ks = np.arange(1, 17)
    agents = np.array([1, 2, 4, 8, 16, 32, 64])
    steps = 32 if quick else 64

    def params(n: int, k: np.ndarray) -> AgentParams:
        return AgentParams(
            system=np.full(n, 512), observation=np.full(n, 512), action=np.full(n, 1024),
            summary=np.full(n, 2048), tool_s=np.full(n, 1.0), steps=steps, k=k,
            retain=np.full(n, 4), lag=np.full(n, 1),
        )  # fmt: skip

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    p = params(ks.size, ks)
    fc = step_timeline("fc", p, coeffs).latency.sum(0)
    for kind in ("kso", "cp"):
        tl = step_timeline(kind, p, coeffs, coeffs)
        _speedup_line(ax1, ks, fc / tl.latency.sum(0), tl.exact, "o-", kind.upper())
    ax1.axhline(1.0, color="0.6", lw=0.8)
    ax1.set_xlabel("k (steps between summaries)")
    ax1.set_ylabel("speedup over FC (task latency ratio)")
    ax1.set_title("One agent, by k (lag 1)")
    ax1.legend()
    for k in (2, 4, 8):
        p = params(agents.size, np.full(agents.size, k))
        c = lockstep_coefficients(coeffs, agents)
        fc = step_timeline("fc", p, c).latency.sum(0)
        kso = step_timeline("kso", p, c, c)
        _speedup_line(ax2, agents, fc / kso.latency.sum(0), kso.exact, "o-", f"KSO k={k}")
    ax2.set_xscale("log", base=2)
    ax2.axhline(1.0, color="0.6", lw=0.8)
    ax2.set_xlabel("agents in lockstep")
    ax2.set_ylabel("speedup over FC")
    ax2.set_title("By concurrency (same engine; KV limits not priced)")
    ax2.legend()
    return _save(
        fig, out, "theory_speedup",
        "closed forms (theory/single_agent.py), DeepSWE bf16 TP4 surrogate (H100), "
        f"{steps} steps, tool 1 s, lag 1 (at k = 1 summaries queue); hollow: an agent's "
        "memory jobs overlap, not exact",
    )  # fmt: skip


def _speedup_line(
    ax: plt.Axes, x: np.ndarray, y: np.ndarray, exact: np.ndarray, style: str, label: str
) -> None:
    """A speedup curve; the points where the closed forms are not exact are hollow."""
    (line,) = ax.plot(x, y, style, label=label)
    inexact = ~np.asarray(exact, dtype=bool)
    if inexact.any():
        ax.plot(x[inexact], y[inexact], "o", mfc="white", mec=line.get_color(), zorder=3)


def fig_stall_bounds(out: Path, quick: bool) -> list[Path]:
    """Theory + simulation: KSO stall vs lag with the Jensen and Scarf bounds."""
    tau, act, summ, mean_tool = 0.01, 20, 80, 0.15
    lags = np.arange(0, 4)
    reps = 4 if quick else 16
    sim = [
        float(
            swap_stall_means(
                reps, tau, act, summ, mean_tool, lag=int(lag), steps=61, k=int(lag) + 2
            ).mean()
        )
        for lag in lags
    ]
    x = lags * (act * tau + mean_tool)  # mean overlapped time
    mu = summ * tau - x
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lags, jensen_lower(summ * tau, x), "v--", label="Jensen lower bound")
    ax.plot(lags, scarf_upper(mu, lags * mean_tool**2), "^--", label="Scarf upper bound")
    ax.plot(lags, sim, "ko", label="simulated mean")
    ax.set_xlabel("lag (steps overlapped with the summary)")
    ax.set_ylabel("mean stall per swap (s)")
    ax.set_title("KSO stall vs lag, exponential tool times")
    ax.legend()
    return _save(
        fig, out, "theory_stall_bounds",
        f"constant iteration {tau * 1e3:.0f} ms; action {act}, summary {summ} tokens; "
        f"tool ~ Exp(mean {mean_tool} s); {reps} replications",
    )  # fmt: skip


def fig_frontier(out: Path, quick: bool) -> list[Path]:
    """Theory: task latency vs fitted resolve rate for CP and KSO across k and load."""
    from sim.effectiveness import (
        EffectivenessParams,
        PolicyFeatures,
        Summarizer,
        load_fit,
        resolve_rate,
    )
    from theory.frontier import LogitEffect, frontier_points

    fit = load_fit()
    effect = LogitEffect(fit.b_0, fit.b_m, fit.instance_sd)
    coeffs = fit_surrogate(LatencyModel("deepswe", "h100_sxm", 4, "bf16")).coefficients
    mem = fit_surrogate(LatencyModel("qwen3-4b", "h100_sxm", 1, "bf16")).coefficients
    ks = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32])
    n = ks.size
    p = AgentParams(
        system=np.full(n, 512),
        observation=np.full(n, 512),
        action=np.full(n, 256),
        summary=np.full(n, 1024),
        tool_s=np.full(n, 2.0),
        steps=24 if quick else 64,
        k=ks,
        retain=np.full(n, 3),
        lag=np.ones(n, dtype=int),
    )
    params = EffectivenessParams(baseline_resolve_rate=0.5)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for agents, alpha in ((1, 1.0), (32, 0.55)):
        arms: tuple[tuple[str, str, float, Summarizer], ...] = (
            ("cp", "o", 3.0, "agent"),
            ("kso", "s", 4.0, "memory"),
        )
        for kind, marker, tail, who in arms:
            pts = frontier_points(kind, p, coeffs, mem, np.array([agents]), 0.5, effect)
            lat = np.array([q.task_latency_s for q in pts])
            rates = [
                resolve_rate(PolicyFeatures(float(k), tail, 0.0, who), params, fit) for k in ks
            ]
            label = f"{kind.upper()} ({agents} agent{'s' if agents > 1 else ''})"
            _frontier_curve(ax, lat, rates, ks, (marker, alpha, label), annotate=agents == 1)
    ax.axhline(50, color="0.5", ls=":", lw=1, label="full context (baseline)")
    ax.set_xlabel("task latency (s, closed form, lockstep agents)")
    ax.set_ylabel("resolve rate (%, fitted model, 95% interval)")
    ax.set_title("Efficiency-effectiveness frontier: CP vs KSO across k and load")
    ax.legend(fontsize=7)
    return _save(
        fig, out, "theory_frontier",
        "closed forms, DeepSWE agent (H100 TP4) and Qwen3-4B memory surrogates; tool 2 s;"
        " retain 3, lag 1 (KSO keeps 4 raw steps); baseline 50%; resolve rate from the model"
        " fitted on The Complexity Trap runs (sim/data/effectiveness_fit.json); red rings:"
        " k outside the fitted range (extrapolated)",
    )  # fmt: skip


def _frontier_curve(
    ax: plt.Axes,
    lat: np.ndarray,
    rates: list[Any],
    ks: np.ndarray,
    style: tuple[str, float, str],
    annotate: bool,
) -> None:
    """One arm of the frontier: resolve rate (95% interval) against task latency over k,
    the k outside the fitted range ringed in red, some k labelled (``annotate``)."""
    marker, alpha, label = style
    mid = np.array([100 * r.rate for r in rates])
    err = np.array(
        [
            [m - 100 * r.low for m, r in zip(mid, rates, strict=True)],
            [100 * r.high - m for m, r in zip(mid, rates, strict=True)],
        ]
    )
    ax.errorbar(
        lat, mid, yerr=err, fmt=marker + "-", alpha=alpha, capsize=2, lw=1, label=label
    )  # fmt: skip
    out_of_range = np.array([r.extrapolated for r in rates])
    ax.scatter(
        lat[out_of_range], mid[out_of_range], s=60, facecolors="none", edgecolors="red", zorder=3
    )  # fmt: skip
    for x, y, k in zip(lat, mid, ks, strict=True):
        if annotate and k in (1, 4, 32):
            ax.annotate(f"k={k}", (x, y), fontsize=6, xytext=(3, -9), textcoords="offset points")


def fig_effectiveness_fit(out: Path, quick: bool) -> list[Path]:
    """The fitted effectiveness model against the runs it was fitted on (held out)."""
    import json
    import re

    from sim.effectiveness import FIT_PATH, EffectivenessParams, PolicyFeatures, load_fit
    from sim.effectiveness import resolve_rate as rate_of

    fit = load_fit()
    report = json.loads(FIT_PATH.read_text())
    rows = report["cross_validation"][report["form"]]["configurations"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ns = np.geomspace(3, 43, 40)
    for m, color in ((0, "C3"), (1, "C1"), (10, "C0")):
        params = EffectivenessParams(baseline_resolve_rate=0.25)
        rates = [rate_of(PolicyFeatures(float(n), float(m), 0.0, "agent"), params, fit) for n in ns]
        ax.plot(ns, [100 * (r.rate - 0.25) for r in rates], color=color, label=f"fitted, M = {m}")
        ax.fill_between(
            ns,
            [100 * (r.low - 0.25) for r in rates],
            [100 * (r.high - 0.25) for r in rates],
            color=color,
            alpha=0.12,
        )
    for i, row in enumerate(rows):
        found = re.search(r"\|N([0-9.]+)\|M([0-9.]*)\|", row["config"])
        if not found:
            continue
        n_run, m_run = float(found.group(1)), float(found.group(2) or 0)
        color = "C3" if m_run == 0 else ("C1" if m_run < 10 else "C0")
        lite = "|lite|" in row["config"]
        ax.scatter(
            n_run * (1.0 + 0.03 * (i % 5 - 2)),  # spread overlapping configurations
            100 * (row["observed"] - row["raw"]),
            color=color,
            marker="o" if lite else "^",
            s=12 + 8 * row["runs"],
            alpha=0.6,
            edgecolors="none",
        )
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("N = k, turns between two summaries (log)")
    ax.set_ylabel("resolve rate change vs raw agent (points)")
    ax.set_title("Effectiveness model vs the Complexity Trap runs")
    ax.legend(fontsize=7)
    cv = report["cross_validation"][report["form"]]["summary"]
    return _save(
        fig, out, "effectiveness_fit",
        "curves: fitted model at a 25% raw rate, 95% intervals (instance bootstrap + run-to-run"
        " spread); points: each configuration's runs (o Lite-50, 3 runs; ^ Verified, 1 run) minus"
        " the raw agent on the same instances, colour by M (red 0, orange 1-5, blue 10-20);"
        f" leave-one-configuration-out MAE {cv['mae_pp']:.1f} pp (same-as-raw"
        f" {cv['mae_raw_pp']:.1f} pp), 95% coverage {cv['coverage_95']:.0%}",
    )  # fmt: skip


def fig_kv_crossover(out: Path, quick: bool) -> list[Path]:
    """Theory: KV each architecture needs vs agents, and where KSO overtakes FC."""
    from theory.bounds import crossover_concurrency, fc_peak_context, kso_peak_context

    def coeffs(model: str, tp: int) -> tuple[np.ndarray, int]:
        lm = LatencyModel(model, "h100_sxm", tp, "bf16")
        return fit_surrogate(lm).coefficients, lm.kv_capacity_tokens()

    fc_c, fc_cap = coeffs("deepswe", 8)
    kso_c, kso_cap = coeffs("deepswe", 4)
    mem_c, _ = coeffs("qwen3-4b", 4)
    params = dict(system=512, observation=512, action=1024, summary=2048, tool_s=0.0,
                  steps=64, k=4, retain=4, lag=1)  # fmt: skip
    cross = crossover_concurrency(params, fc_c, kso_c, mem_c, fc_cap, 128 if quick else 512)
    n = np.arange(1, 129)
    fc_need = n * fc_peak_context(512, 512, 1024, 64)
    kso_need = n * kso_peak_context(512, 512, 1024, 2048, 4, 4, 1)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(n, fc_need / 1e6, label="FC: agents x peak context")
    ax.plot(n, kso_need / 1e6, label="KSO: agents x bounded context")
    ax.axhline(fc_cap / 1e6, color="C0", ls="--", lw=0.8, label="FC KV capacity (TP8)")
    ax.axhline(kso_cap / 1e6, color="C1", ls="--", lw=0.8, label="KSO agent KV capacity (TP4)")
    if cross["crossover"]:
        ax.axvline(cross["crossover"], color="k", lw=0.8)
        ax.text(cross["crossover"], ax.get_ylim()[1] * 0.9, f" crossover ~{cross['crossover']}",
                fontsize=8)  # fmt: skip
    ax.set_xlabel("concurrent agents")
    ax.set_ylabel("KV tokens needed (millions)")
    ax.set_title("KV capacity and the FC/KSO crossover")
    ax.legend(fontsize=8, loc="center right")
    return _save(
        fig, out, "theory_kv_crossover",
        "DeepSWE bf16, H100: FC TP8; KSO TP4 + Qwen3-4B TP4; 64 steps, k = R = 4, lag 1\n"
        "crossover: lockstep forms + FC KV limit",
    )  # fmt: skip
