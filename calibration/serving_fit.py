"""Fitting a serving framework's overhead on online-serving measurements.

The kernel tables price what the GPU does; what a serving framework adds around it they
cannot know: per engine iteration (scheduling, input preparation, sampling, output
processing), per iteration on several GPUs, per scheduled sequence, and per request
before it is scheduled (HTTP, tokenization: TTFT only). Those terms
(:class:`calibration.profile.FrameworkOverhead`) are fitted here on real ``vllm bench
serve`` points (a CSV of TTFT and TPOT per model, TP, concurrency and lengths), each
replayed through the simulator.

A replay is a closed loop whose schedule depends on time, so the fit is a fixed point:
simulate every row with the current overhead, read off how each mean TTFT and TPOT
depends on the terms *with that schedule* (the simulation reports, per request, the
iterations and scheduled sequences its first token and its decode spanned: exactly
linear), solve the non-negative least squares for new terms, simulate again, until the
terms move by less than ``tolerance``. TPOT measures iterations, so the per-iteration and
per-sequence terms are fitted on TPOT; the request overhead, a constant in TTFT, on TTFT.

This module does not simulate (``calibration`` may not import ``sim``): the caller passes
a :data:`Simulator` (``sim.serving.simulate_row``); ``comem calibrate fit-serving`` wires
them together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np

from calibration.errors import ComemInputError
from calibration.profile import FrameworkOverhead
from calibration.serving import ServingRow, ServingSetup

#: The overhead terms fitted on TPOT (iteration work) and on TTFT (before scheduling).
TPOT_TERMS = (
    "per_iteration_s",
    "per_iteration_tp_s",
    "per_sequence_s",
    "per_iteration_serial_s",
    "per_sequence_serial_s",
)
TTFT_TERMS = ("request_overhead_s",)
#: What ``fit-serving`` fits by default. Not ``per_iteration_tp_s``: told apart from
#: ``per_iteration_s`` only by one-GPU rows, which the shared data lack (its one TP1 row
#: is below the roofline); vLLM V1 hands each step to its TP workers through one
#: shared-memory broadcast, so no separate TP term is assumed. The serial terms are told
#: apart from the CPU ones only by rows with asynchronous scheduling (without it every
#: term adds); on synchronous rows alone their split is NNLS's, the predictions the same.
SERVING_FIT_TERMS = (
    "per_iteration_s",
    "per_sequence_s",
    "per_iteration_serial_s",
    "per_sequence_serial_s",
    "request_overhead_s",
)


@dataclass(frozen=True)
class RowFeatures:
    """A row's simulated mean TTFT and TPOT at the overhead it was simulated with, and
    their derivatives with respect to each overhead term on that schedule."""

    ttft_s: float
    tpot_s: float
    ttft_per_term: dict[str, float]
    tpot_per_term: dict[str, float]
    preemptions: int = 0
    kv_cache_tokens: int = 0

    def predict(self, at: FrameworkOverhead, base: FrameworkOverhead) -> tuple[float, float]:
        """Mean TTFT and TPOT with the overhead moved from ``base`` to ``at`` (linear)."""
        ttft, tpot = self.ttft_s, self.tpot_s
        for term, slope in self.ttft_per_term.items():
            ttft += slope * (getattr(at, term) - getattr(base, term))
        for term, slope in self.tpot_per_term.items():
            tpot += slope * (getattr(at, term) - getattr(base, term))
        return ttft, tpot


#: Simulates one row under its setup with the given overhead.
Simulator = Callable[[ServingRow, ServingSetup, FrameworkOverhead], RowFeatures]
#: Simulates many rows (each under its setup) with one overhead: a :data:`Simulator` over
#: a list, which may run rows in parallel (the result is the same, row for row)
BatchSimulator = Callable[
    [Sequence[ServingRow], Sequence[ServingSetup], FrameworkOverhead], list[RowFeatures]
]


@dataclass
class ServingFit:
    """A fitted overhead, the rows it was fitted on and their final simulation."""

    overhead: FrameworkOverhead
    rows: list[ServingRow]
    features: list[RowFeatures]
    iterations: int
    history: list[FrameworkOverhead] = field(default_factory=list)

    def table(self) -> Any:
        return serving_table(self.rows, self.features)


def serving_table(rows: Sequence[ServingRow], features: Sequence[RowFeatures]) -> Any:
    """One record per row: measured and simulated TTFT / TPOT and their relative errors."""
    import pandas as pd

    records = []
    for r, f in zip(rows, features, strict=True):
        records.append(
            {
                "model": r.model,
                "dtype": r.dtype,
                "tp": r.tp,
                "concurrency": r.concurrency,
                "isl": r.isl,
                "osl": r.osl,
                "ttft_ms": r.ttft_s * 1e3,
                "tpot_ms": r.tpot_s * 1e3,
                "pred_ttft_ms": f.ttft_s * 1e3,
                "pred_tpot_ms": f.tpot_s * 1e3,
                "ttft_error": f.ttft_s / r.ttft_s - 1.0,
                "tpot_error": f.tpot_s / r.tpot_s - 1.0,
                "preemptions": f.preemptions,
                "kv_cache_tokens": f.kv_cache_tokens,
            }
        )
    return pd.DataFrame.from_records(records)


def _solve(
    rows: Sequence[ServingRow],
    feats: Sequence[RowFeatures],
    base: FrameworkOverhead,
    fit_terms: Sequence[str],
) -> FrameworkOverhead:
    """One linearized step: NNLS for the TPOT terms, then the TTFT terms given them."""
    from scipy.optimize import nnls

    updates: dict[str, float] = {}
    tpot_terms = [t for t in TPOT_TERMS if t in fit_terms]
    if tpot_terms:
        y = np.array([r.tpot_s for r in rows])
        # tpot(theta) = tpot0 - sum_j slope_j base_j + sum_j slope_j theta_j
        a = np.array([[f.tpot_per_term.get(t, 0.0) for t in tpot_terms] for f in feats])
        fixed = np.array(
            [
                f.tpot_s - sum(f.tpot_per_term.get(t, 0.0) * getattr(base, t) for t in tpot_terms)
                for f in feats
            ]
        )
        usable = np.any(a > 0, axis=0)  # a term no row depends on (TP 1 only) stays put
        coef = np.zeros(len(tpot_terms))
        if usable.any():
            coef[usable] = nnls(a[:, usable] / y[:, None], 1.0 - fixed / y)[0]
        for t, c, ok in zip(tpot_terms, coef, usable, strict=True):
            updates[t] = float(c) if ok else getattr(base, t)
    moved = replace(base, **updates)
    ttft_terms = [t for t in TTFT_TERMS if t in fit_terms]
    if ttft_terms:
        y = np.array([r.ttft_s for r in rows])
        pred = np.array([f.predict(moved, base)[0] for f in feats])
        a = np.array([[f.ttft_per_term.get(t, 0.0) for t in ttft_terms] for f in feats])
        fixed = pred - a @ np.array([getattr(moved, t) for t in ttft_terms])
        coef = nnls(a / y[:, None], 1.0 - fixed / y)[0]
        moved = replace(moved, **{t: float(c) for t, c in zip(ttft_terms, coef, strict=True)})
    return moved


def fit_serving_overhead(
    rows: Sequence[ServingRow],
    setups: Sequence[ServingSetup],
    simulate: Simulator | BatchSimulator,
    start: FrameworkOverhead | None = None,
    fit_terms: Sequence[str] = TPOT_TERMS + TTFT_TERMS,
    max_iterations: int = 6,
    tolerance: float = 0.01,
    batch: bool = False,
) -> ServingFit:
    """Fit the overhead terms ``fit_terms`` (the others stay at ``start``'s values).

    Minimizes the relative errors of TPOT (per-iteration terms) and TTFT (request term),
    re-simulating until no term moves by more than ``tolerance`` (relative, or 1 us).
    ``batch``: ``simulate`` is a :data:`BatchSimulator`.
    """

    def simulate_all(theta: FrameworkOverhead) -> list[RowFeatures]:
        if batch:
            return cast(BatchSimulator, simulate)(rows, setups, theta)
        one = cast(Simulator, simulate)
        return [one(r, s, theta) for r, s in zip(rows, setups, strict=True)]

    if not rows:
        raise ComemInputError("fit-serving: no rows to fit on")
    if len(setups) != len(rows):
        raise ComemInputError("fit-serving: one setup per row is needed")
    unknown = [t for t in fit_terms if t not in TPOT_TERMS + TTFT_TERMS]
    if unknown:
        raise ComemInputError(f"fit-serving: cannot fit {', '.join(unknown)} on serving rows")
    theta = start if start is not None else FrameworkOverhead()
    history = [theta]
    feats: list[RowFeatures] = []
    done = 0
    while done < max_iterations:
        done += 1
        feats = simulate_all(theta)
        new = _solve(rows, feats, theta, fit_terms)
        history.append(new)
        moved = max(
            abs(getattr(new, t) - getattr(theta, t)) / max(abs(getattr(theta, t)), 1e-6)
            for t in fit_terms
        )
        theta = new
        if moved < tolerance:
            break
    # the reported errors are a simulation at the final terms, not the linearization
    feats = simulate_all(theta)
    return ServingFit(theta, list(rows), feats, done, history)


def error_summary(table: Any, by: Sequence[str] = ("model", "dtype", "tp")) -> Any:
    """MAPE and mean signed error of TTFT and TPOT per group (and ``all``)."""
    import pandas as pd

    def stats(g: Any) -> pd.Series:
        return pd.Series(
            {
                "rows": len(g),
                "ttft_mape": float(np.abs(g["ttft_error"]).mean()),
                "ttft_signed": float(g["ttft_error"].mean()),
                "tpot_mape": float(np.abs(g["tpot_error"]).mean()),
                "tpot_signed": float(g["tpot_error"].mean()),
            }
        )

    parts = [table.groupby(list(by)).apply(stats, include_groups=False).reset_index()]
    total = stats(table).to_frame().T
    for col in by:
        total[col] = "all"
    parts.append(total[[*by, *total.columns[: -len(by)]]])
    out = pd.concat(parts, ignore_index=True)
    out["rows"] = out["rows"].astype(int)
    return out


def overhead_entry(
    fit: ServingFit,
    framework: str,
    source: str,
    setups_note: str,
    cross_validation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The profile's record of a serving fit: terms, provenance, errors."""
    table = fit.table()
    entry: dict[str, Any] = {k: float(f"{v:.6g}") for k, v in fit.overhead.terms().items()}
    entry.update(
        {
            "framework": framework,
            "fitted_on": source,
            "assumptions": setups_note,
            "rows": len(table),
            "ttft_mape": round(float(np.abs(table["ttft_error"]).mean()), 4),
            "tpot_mape": round(float(np.abs(table["tpot_error"]).mean()), 4),
            "fixed_point_iterations": fit.iterations,
            # the servers the rows ran on: asynchronous scheduling by their versions (a
            # profile read later prices its engines the same way unless told otherwise)
            "async_scheduling": any(ServingSetup().schedules_async(r) for r in fit.rows),
        }
    )
    if cross_validation is not None:
        entry["cv_leave_one_model_out"] = cross_validation
    return entry


def cross_validation_record(tables: dict[str, Any]) -> dict[str, Any]:
    """Per held-out model: TTFT and TPOT MAPE / signed error (from each fold's table)."""
    out: dict[str, Any] = {}
    for model, t in tables.items():
        out[model] = {
            "rows": int(len(t)),
            "ttft_mape": round(float(np.abs(t["ttft_error"]).mean()), 4),
            "ttft_signed": round(float(t["ttft_error"].mean()), 4),
            "tpot_mape": round(float(np.abs(t["tpot_error"]).mean()), 4),
            "tpot_signed": round(float(t["tpot_error"].mean()), 4),
        }
    return out
