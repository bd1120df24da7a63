"""Fit :mod:`sim.effectiveness` on "The Complexity Trap" runs (``../shared/data/effectiveness``).

``comem fit-effectiveness`` runs :func:`fit_and_write`; everything else runs from the
committed ``sim/data/effectiveness_fit.json``.

Why a mixed (random-intercept) logistic model and not a per-run regression: the runs
share instances, and instances dominate the variance (some are solved by every run,
some by none). With an instance intercept ``a_i ~ N(mu_g, s_g^2)`` per group ``g``
(scaffold x agent model x benchmark), every summary run is compared with the raw runs
on the same instances (paired), and instances a group never or always solves carry no
weight on the policy effect, as they should. Fixed instance intercepts would be biased
(most Verified instances have 2-3 runs per model: the incidental-parameter problem);
the random intercept is integrated out exactly by Gauss-Hermite quadrature.

Data used: raw agents and LLM-Summary runs (every prompt variant; their differences go
into the run-to-run spread ``tau``) of the groups that have a raw run; not the derived
"restricted" rows (they repeat Verified-500 runs), not masking, omission, truncation or
hybrid runs (other mechanisms, not a summary). Features per run: ``1/N`` and
``1/(1+M)`` (0 and 0 for raw runs).

Uncertainty: (1) instance bootstrap: instances resampled within each group, the model
refitted, ``B`` draws of ``(b_k, b_m, pooled s)``; (2) run-to-run: each run's log-odds
shift against the fit, given the other runs' evidence on its instances, pooled by
DerSimonian-Laird into ``tau``. Checked by leave-one-configuration-out prediction.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import minimize
from scipy.special import expit

from calibration.errors import ComemInputError

#: quadrature nodes for the random intercept
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(32)
WEIGHTS = WEIGHTS / math.sqrt(2.0 * math.pi)
FIT_STRATEGIES = ("raw", "llm_summary")
#: the model's form (features of a run with N, M); the first is the one the model uses
#: (:mod:`sim.effectiveness`): a loss per summary, b_0 + b_m / (1 + M), times summaries
#: per step 1 / N, so no summaries lose nothing; the second (a rate term plus a tail term
#: that does not vanish without summaries) is fitted only for the cross-validated comparison
FORMS = {
    "per-summary": lambda n, m: (1.0 / n, 1.0 / (n * (1.0 + m))),
    "rate+tail": lambda n, m: (1.0 / n, 1.0 / (1.0 + m)),
}
FORM = "per-summary"
SUBSET_FILES = {
    "lite-50": "lite-50-disjoint.txt",
    "verified-150": "verified-150.txt",
    "verified-50": "verified-50.txt",
}


@dataclass(frozen=True)
class Run:
    """One report: its group, configuration and outcomes per instance of its subset."""

    name: str
    group: str
    config: str
    strategy: str
    n: float
    m: float
    instances: tuple[str, ...]
    resolved: frozenset[str]

    def features(self, form: str = FORM) -> tuple[float, float]:
        if self.strategy == "raw":
            return (0.0, 0.0)
        return FORMS[form](self.n, self.m)

    @property
    def rate(self) -> float:
        return len(self.resolved & set(self.instances)) / len(self.instances)


@dataclass(frozen=True)
class Data:
    """Observations (one per run and instance) as arrays, units = (group, instance)."""

    y: np.ndarray
    unit: np.ndarray
    run: np.ndarray
    x: np.ndarray  # (observations, 2)
    unit_group: np.ndarray
    #: (units, observations) 0/1: sums observations per unit
    by_unit: sparse.csr_matrix
    groups: tuple[str, ...]
    runs: tuple[Run, ...]


@dataclass(frozen=True)
class Glmm:
    mu: np.ndarray
    sd: np.ndarray
    beta: np.ndarray
    loglik: float


def _ids(path: Path) -> tuple[str, ...]:
    return tuple(i for i in path.read_text().replace("\n", "|").split("|") if i.strip())


def read_runs(root: Path) -> list[Run]:
    """The runs the fit uses, from the derived table and the reports (module docstring)."""
    table = root / "complexity_trap_ablation_runs.csv"
    if not table.is_file():
        raise ComemInputError(f"{root}: no complexity_trap_ablation_runs.csv (see its README)")
    with table.open() as f:
        rows = [r for r in csv.DictReader(f) if not r["derived_from"]]
    reports = {
        r["report_file"]: json.loads(
            (root / "swe-agent-eval-results" / r["report_file"]).read_text()
        )
        for r in rows
    }
    v500 = sorted(
        {
            i
            for r in rows
            if r["subset"] == "verified-500"
            for k in ("submitted_ids", "incomplete_ids")
            for i in reports[r["report_file"]].get(k, [])
        }
    )
    runs = []
    for r in rows:
        if r["strategy"] not in FIT_STRATEGIES:
            continue
        subset = r["subset"]
        ids = tuple(v500) if subset == "verified-500" else _ids(root / SUBSET_FILES[subset])
        bench = "lite" if subset.startswith("lite") else "verified"
        group = f"{r['scaffold']}|{r['agent_model']}|{bench}"
        config = f"{group}|{r['strategy']}|N{r['N']}|M{r['M']}|{r['variant']}"
        runs.append(
            Run(
                name=r["run"],
                group=group,
                config=config,
                strategy=r["strategy"],
                n=float(r["N"] or "nan"),
                m=float(r["M"] or 0),
                instances=ids,
                resolved=frozenset(reports[r["report_file"]]["resolved_ids"]),
            )
        )
    with_raw = {r.group for r in runs if r.strategy == "raw"}
    return [r for r in runs if r.group in with_raw]


def build(runs: list[Run], form: str = FORM) -> Data:
    """Stack the runs' per-instance outcomes."""
    groups = tuple(sorted({r.group for r in runs}))
    units: dict[tuple[str, str], int] = {}
    y, unit, run, x = [], [], [], []
    for j, r in enumerate(runs):
        for i in r.instances:
            u = units.setdefault((r.group, i), len(units))
            y.append(i in r.resolved)
            unit.append(u)
            run.append(j)
            x.append(r.features(form))
    unit_group = np.empty(len(units), dtype=int)
    for (g, _), u in units.items():
        unit_group[u] = groups.index(g)
    n = len(y)
    by_unit = sparse.csr_matrix((np.ones(n), (np.asarray(unit), np.arange(n))), (len(units), n))
    return Data(
        np.asarray(y, float),
        np.asarray(unit),
        np.asarray(run),
        np.asarray(x, float),
        unit_group,
        by_unit,
        groups,
        tuple(runs),
    )


def _unpack(theta: np.ndarray, ng: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return theta[:ng], np.exp(theta[ng : 2 * ng]), theta[2 * ng :]


def _node_loglik(theta: np.ndarray, d: Data) -> tuple[np.ndarray, np.ndarray]:
    """Per observation and node: the linear predictor and the log-likelihood."""
    mu, sd, beta = _unpack(theta, len(d.groups))
    g = d.unit_group[d.unit]
    eta = (mu[g] + d.x @ beta)[:, None] + sd[g][:, None] * NODES[None, :]
    ll = d.y[:, None] * eta - np.logaddexp(0.0, eta)
    return eta, ll


def objective(theta: np.ndarray, d: Data, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Minus the marginal log-likelihood (instance ``weights``: bootstrap counts), and
    its gradient."""
    ng = len(d.groups)
    eta, ll = _node_loglik(theta, d)
    per_unit = d.by_unit @ ll
    top = per_unit.max(axis=1, keepdims=True)
    lw = per_unit - top + np.log(WEIGHTS)[None, :]
    norm = np.log(np.exp(lw).sum(axis=1))
    post = np.exp(lw - norm[:, None])  # posterior weight of each node, per unit
    value = float(weights @ (top[:, 0] + norm))
    resid = (d.y[:, None] - expit(eta)) * post[d.unit] * weights[d.unit][:, None]
    _, sd, _ = _unpack(theta, ng)
    g = d.unit_group[d.unit]
    grad = np.concatenate(
        [
            np.bincount(g, resid.sum(1), ng),
            np.bincount(g, resid @ NODES, ng) * sd,
            d.x.T @ resid.sum(1),
        ]
    )
    return -value, -grad


def fit_glmm(d: Data, weights: np.ndarray | None = None, start: np.ndarray | None = None) -> Glmm:
    """Maximum marginal likelihood (L-BFGS on the exact gradient)."""
    ng = len(d.groups)
    w = np.ones(d.unit_group.size) if weights is None else weights
    theta0 = (
        start
        if start is not None
        else np.concatenate([np.full(ng, -1.0), np.zeros(ng), np.zeros(d.x.shape[1])])
    )
    res = minimize(objective, theta0, args=(d, w), jac=True, method="L-BFGS-B")
    mu, sd, beta = _unpack(res.x, ng)
    return Glmm(mu, sd, beta, -float(res.fun))


def theta_of(fit: Glmm) -> np.ndarray:
    return np.concatenate([fit.mu, np.log(fit.sd), fit.beta])


def pooled_sd(d: Data, fit: Glmm) -> float:
    """The instance SD pooled over groups, weighted by their instances."""
    counts = np.bincount(d.unit_group, minlength=len(d.groups))
    return float(np.sqrt((counts * fit.sd**2).sum() / counts.sum()))


def bootstrap(d: Data, fit: Glmm, draws: int, seed: int) -> np.ndarray:
    """Instance bootstrap within groups: ``draws`` rows of (b_k, b_m, pooled s)."""
    rng = np.random.default_rng(seed)
    out = np.empty((draws, 3))
    start = theta_of(fit)
    for b in range(draws):
        w = np.zeros(d.unit_group.size)
        for g in range(len(d.groups)):
            members = np.flatnonzero(d.unit_group == g)
            np.add.at(w, rng.choice(members, members.size), 1.0)
        f = fit_glmm(d, w, start)
        out[b] = (*f.beta, pooled_sd(d, f))
    return out


def run_shifts(d: Data, fit: Glmm) -> tuple[np.ndarray, np.ndarray]:
    """Each run's log-odds shift against the fit given the other runs on its instances
    (one Newton step from 0), and its sampling variance."""
    eta, ll = _node_loglik(theta_of(fit), d)
    per_unit = d.by_unit @ ll
    shift, var = np.empty(len(d.runs)), np.empty(len(d.runs))
    for j in range(len(d.runs)):
        obs = d.run == j
        u = d.unit[obs]
        lw = per_unit[u] - ll[obs] + np.log(WEIGHTS)[None, :]  # leave run j out
        lw -= lw.max(axis=1, keepdims=True)
        post = np.exp(lw)
        post /= post.sum(axis=1, keepdims=True)
        p = expit(eta[obs])
        e = (post * p).sum(1)
        slope = (post * p * (1 - p)).sum()
        shift[j] = (d.y[obs] - e).sum() / slope
        var[j] = (e * (1 - e)).sum() / slope**2
    return shift, var


def dersimonian_laird(shift: np.ndarray, var: np.ndarray) -> float:
    """Between-run SD beyond sampling noise (method of moments)."""
    w = 1.0 / var
    mean = (w * shift).sum() / w.sum()
    q = (w * (shift - mean) ** 2).sum()
    tau2 = (q - (len(shift) - 1)) / (w.sum() - (w**2).sum() / w.sum())
    return float(math.sqrt(max(tau2, 0.0)))


@dataclass(frozen=True)
class CvRow:
    """One held-out configuration: observed and predicted mean resolve rate of its runs,
    the raw agent's predicted rate on the same instances, the 95% prediction interval."""

    config: str
    runs: int
    observed: float
    predicted: float
    raw: float
    low: float
    high: float


def _predict_run(d: Data, fit: Glmm, j: int, tau: float) -> tuple[float, float, float]:
    """Run j's predicted rate from the other runs (its own outcomes left out), the raw
    agent's on the same instances, and the prediction SD (Bernoulli + run shift)."""
    eta, ll = _node_loglik(theta_of(fit), d)
    per_unit = d.by_unit @ ll
    obs = d.run == j
    lw = per_unit[d.unit[obs]] - ll[obs] + np.log(WEIGHTS)[None, :]
    lw -= lw.max(axis=1, keepdims=True)
    post = np.exp(lw)
    post /= post.sum(axis=1, keepdims=True)
    p = expit(eta[obs])
    e = (post * p).sum(1)
    raw = (post * expit(eta[obs] - (d.x[obs] @ fit.beta)[:, None])).sum(1)
    slope = (post * p * (1 - p)).sum()
    sd = math.sqrt((e * (1 - e)).sum() + (slope * tau) ** 2) / e.size
    return float(e.mean()), float(raw.mean()), sd


def cross_validate(runs: list[Run], tau: float, form: str = FORM) -> list[CvRow]:
    """Leave one summary configuration out: refit without its runs (keeping the others,
    raw runs on the same instances included) and predict each of its runs."""
    d_all = build(runs, form)
    start = theta_of(fit_glmm(d_all))
    rows = []
    for config in sorted({r.config for r in runs if r.strategy != "raw"}):
        held = [j for j, r in enumerate(runs) if r.config == config]
        w_runs = np.ones(len(runs))
        w_runs[held] = 0.0
        # a held-out run's observations get weight 0 through a per-observation mask
        d = _masked(d_all, w_runs)
        fit = fit_glmm(d, None, start)
        preds = [_predict_run(d_all, fit, j, tau) for j in held]
        n = len(held)
        pred = float(np.mean([p[0] for p in preds]))
        sd = math.sqrt(sum(p[2] ** 2 for p in preds)) / n
        rows.append(
            CvRow(
                config,
                n,
                float(np.mean([runs[j].rate for j in held])),
                pred,
                float(np.mean([p[1] for p in preds])),
                pred - 1.96 * sd,
                pred + 1.96 * sd,
            )
        )
    return rows


def _masked(d: Data, keep_runs: np.ndarray) -> Data:
    """``d`` without the observations of runs whose ``keep_runs`` is 0."""
    keep = keep_runs[d.run] > 0
    n = int(keep.sum())
    unit = d.unit[keep]
    by_unit = sparse.csr_matrix((np.ones(n), (unit, np.arange(n))), (d.unit_group.size, n))
    return Data(d.y[keep], unit, d.run[keep], d.x[keep], d.unit_group, by_unit, d.groups, d.runs)


def cv_summary(rows: list[CvRow]) -> dict[str, float]:
    """Run-weighted mean absolute error of the model and of 'same as the raw agent', and
    the share of configurations inside their 95% prediction interval."""
    w = np.array([r.runs for r in rows], float)
    obs = np.array([r.observed for r in rows])
    return {
        "configurations": len(rows),
        "mae_pp": float(100 * (w * np.abs(obs - [r.predicted for r in rows])).sum() / w.sum()),
        "mae_raw_pp": float(100 * (w * np.abs(obs - [r.raw for r in rows])).sum() / w.sum()),
        "coverage_95": float(np.mean([r.low <= r.observed <= r.high for r in rows])),
    }


def fit_report(root: Path, draws: int = 200, seed: int = 23) -> dict[str, Any]:
    """Fit, bootstrap, run spread and cross-validation, as the committed JSON's dict."""
    runs = read_runs(root)
    d = build(runs)
    fit = fit_glmm(d)
    tau = dersimonian_laird(*run_shifts(d, fit))
    boot = bootstrap(d, fit, draws, seed)
    cv = {form: cross_validate(runs, tau, form) for form in FORMS}
    summaries = [r for r in runs if r.strategy != "raw"]
    return {
        "model": "logit P(resolved) = a_i + q (b_0 + b_m / (1 + M)) / k, a_i ~ N(mu_g, s_g^2)",
        "form": FORM,
        "estimate": {
            "b_0": float(fit.beta[0]),
            "b_m": float(fit.beta[1]),
            "instance_sd": pooled_sd(d, fit),
            "tau": tau,
            "loglik": fit.loglik,
        },
        "groups": {
            g: {"mu": float(m), "sd": float(s)}
            for g, m, s in zip(d.groups, fit.mu, fit.sd, strict=True)
        },
        "fitted_range": {
            "k": [min(r.n for r in summaries), max(r.n for r in summaries)],
            "raw_tail": [min(r.m for r in summaries), max(r.m for r in summaries)],
        },
        "data": {
            "runs": len(runs),
            "summary_runs": len(summaries),
            "observations": int(d.y.size),
            "instance_units": int(d.unit_group.size),
        },
        "bootstrap": {
            "draws": np.round(boot, 6).tolist(),
            "columns": ["b_0", "b_m", "instance_sd"],
            "seed": seed,
        },
        "cross_validation": {
            form: {"summary": cv_summary(rows), "configurations": [vars(r) for r in rows]}
            for form, rows in cv.items()
        },
        "provenance": {
            "source": "../shared/data/effectiveness (The Complexity Trap runs, MIT):"
            " complexity_trap_ablation_runs.csv, swe-agent-eval-results/*.json,"
            " lite-50-disjoint.txt, verified-150.txt",
            "command": f"comem fit-effectiveness --draws {draws} --seed {seed}",
            "date": dt.date.today().isoformat(),
            "module": "sim/effectiveness_fit.py",
        },
    }


def fit_and_write(root: Path, out: Path, draws: int = 200, seed: int = 23) -> dict[str, Any]:
    """Refit from ``root`` and write the JSON the model runs from."""
    from calibration.outputs import write_text

    report = fit_report(root, draws, seed)
    write_text(out, json.dumps(report, indent=1) + "\n", "effectiveness fit")
    return report
