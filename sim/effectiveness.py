"""Effectiveness: the share of tasks an architecture still solves, fitted on real runs.

The model (fitted by :mod:`sim.effectiveness_fit` on the 159 SWE-bench runs of "The
Complexity Trap"; coefficients in ``sim/data/effectiveness_fit.json`` with their
provenance) is a logistic model with a random intercept per instance:

    logit P(instance i resolved | policy) = a_i + q * (b_0 + b_m / (1 + M)) / k

``a_i ~ N(mu, s^2)`` the instance's log-odds under the raw agent, ``k`` the steps between
two summaries (the runs' N), ``M`` the raw steps the context keeps right after a summary
(the runs' M), ``q`` the summarizer's loss scale (1: a generic LLM summarizer as in the
runs, 0: a summary that loses nothing, 2: twice the loss): a loss per summary that
shrinks with the raw steps kept, times summaries per step. A full-context agent (no
summaries) is the raw agent: ``k = inf``, no loss. (A rate term plus a tail term that
stays without summaries cross-validates as well; this form was kept because it loses
nothing without summaries: ``effectiveness_fit.json``, ``cross_validation``.) Over
instances, the resolve rate given the raw agent's rate ``p0`` is, in the probit
approximation of the logistic-normal mean,

    p = sigmoid(logit(p0) + D / c),   D = q (b_0 + b_m / (1 + M)) / k,  c = sqrt(1 + pi s^2 / 8)

(``theory.frontier.RESOLVE_RATE`` is the same closed form). Intervals: the 2.5 and 97.5
percentiles of ``p`` over the instance-bootstrap draws of ``(b_0, b_m, s)`` committed
with the fit, each plus one run-to-run shift ``N(0, tau^2)`` (tau: the runs' spread
beyond instance and Bernoulli noise), so they hold one deployment's run, not a mean.

Mapping an architecture to (k, M, lag) (:func:`policy_features`):

=============  ================  =======================  =====  ===========
kind           k (steps/summ.)   M (raw steps kept)       lag    summarizer
=============  ================  =======================  =====  ===========
fc             inf (none)        all                      0      none
cp             k                 retain                   0      agent model
sm             k                 retain                   0      memory model
kso            k                 retain + lag             lag    memory model
kso-authors    R = retain        1/2 (summary + action)   1      memory model
kso-adaptive   its home k        retain + lag (home)      lag    memory model
=============  ================  =======================  =====  ===========

KSO's lagged steps run on the old context and stay verbatim after the swap, so its raw
tail is ``retain + lag`` (the runs' M is the tail right after a summary). The authors'
KSO swaps in a summary that already covers the last observation plus the last action
alone: half a raw step, between the runs' M = 0 (summary only) and M = 1. Staleness has
no data (every run summarized synchronously): ``staleness_logit_per_step`` (default 0)
is a stated assumption, not a fit. Summary length did not vary in the runs either: the
model does not depend on it. A task the simulator ended early (context or memory limit)
resolves with probability ``capped_resolve_factor`` times its policy's rate (default 0).
The loss counts summaries made: a run scales ``D`` by the share of its summaries that came
back swapped in rather than refused by an engine (a refused summary, or none in tasks
shorter than k, loses nothing; one in flight at a task's end counts neither way;
:func:`resolve_rate`'s ``summaries_made``, :func:`sim.compare.summaries_made`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field

from calibration.errors import ComemInputError
from calibration.inputs import InputModel

FIT_PATH = Path(__file__).parent / "data" / "effectiveness_fit.json"

Summarizer = Literal["none", "agent", "memory"]
Probability = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
Scale = Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)]


class EffectivenessParams(InputModel):
    """A scenario's ``[effectiveness]`` table: what the fitted model cannot know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the raw (full-context) agent's resolve rate on the scenario's tasks, without a
    #: context cap (tasks a cap ends in the simulation lower it: capped_resolve_factor)
    baseline_resolve_rate: Probability = 0.5
    #: the agent model's summaries (cp): loss scale against the runs' generic summarizer
    agent_loss_scale: Scale = 1.0
    #: the memory model's summaries (sm, kso*): loss scale (0: a perfect memory model;
    #: CoMem's trained Qwen3-4B may be below 1, an untrained small model above)
    memory_loss_scale: Scale = 1.0
    #: log-odds lost per step of summary staleness (lag); no data: an assumption
    staleness_logit_per_step: Annotated[float, Field(ge=-5.0, le=5.0, allow_inf_nan=False)] = 0.0
    #: a task ended early (a context limit) resolves at this fraction of its policy's rate
    capped_resolve_factor: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0


@dataclass(frozen=True)
class PolicyFeatures:
    """What the model reads of a policy: ``k`` steps per summary (inf: none), ``raw_tail``
    raw steps kept after a summary, ``lag`` steps of staleness, who summarizes."""

    k: float
    raw_tail: float
    lag: float
    summarizer: Summarizer


@dataclass(frozen=True)
class EffectFit:
    """The committed fit: point estimates and bootstrap draws (columns b_0, b_m, s),
    run-to-run spread ``tau`` (log-odds), the fitted range and the provenance."""

    b_0: float
    b_m: float
    instance_sd: float
    tau: float
    draws: np.ndarray
    k_range: tuple[float, float]
    raw_tail_range: tuple[float, float]
    provenance: dict[str, Any]


@dataclass(frozen=True)
class ResolveRate:
    """A predicted resolve rate with its 95% interval, and whether it extrapolates."""

    rate: float
    low: float
    high: float
    extrapolated: bool
    #: the rate under every bootstrap draw (for paired differences)
    draws: np.ndarray


@dataclass(frozen=True)
class ResolveDelta:
    """Percentage points against a reference architecture, with a paired 95% interval."""

    pp: float
    low: float
    high: float


def fit_from_dict(data: dict[str, Any]) -> EffectFit:
    """An :class:`EffectFit` from the committed JSON's dictionary."""
    est = data["estimate"]
    return EffectFit(
        b_0=float(est["b_0"]),
        b_m=float(est["b_m"]),
        instance_sd=float(est["instance_sd"]),
        tau=float(est["tau"]),
        draws=np.asarray(data["bootstrap"]["draws"], dtype=float),
        k_range=(float(data["fitted_range"]["k"][0]), float(data["fitted_range"]["k"][1])),
        raw_tail_range=(
            float(data["fitted_range"]["raw_tail"][0]),
            float(data["fitted_range"]["raw_tail"][1]),
        ),
        provenance=data["provenance"],
    )


@lru_cache(maxsize=4)
def load_fit(path: Path = FIT_PATH) -> EffectFit:
    """The committed fit (``sim/data/effectiveness_fit.json``)."""
    try:
        return fit_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise ComemInputError(f"{path}: not an effectiveness fit ({exc})") from None


def policy_features(params: Any) -> PolicyFeatures:
    """The documented map (module docstring) from a policy's parameters (a
    :class:`sim.policy.PolicyParams`) to the model's features."""
    kind = params.kind
    if kind == "fc":
        return PolicyFeatures(math.inf, math.inf, 0.0, "none")
    if kind in ("cp", "sm"):
        who: Summarizer = "agent" if kind == "cp" else "memory"
        return PolicyFeatures(float(params.k), float(params.retain), 0.0, who)
    if kind in ("kso", "kso-adaptive"):
        return PolicyFeatures(
            float(params.k), float(params.retain + params.lag), float(params.lag), "memory"
        )
    if kind == "kso-authors":
        return PolicyFeatures(float(params.retain), 0.5, 1.0, "memory")
    raise ComemInputError(f"no effectiveness map for kind '{kind}'")


def loss_logit(features: PolicyFeatures, params: EffectivenessParams, b_0: Any, b_m: Any) -> Any:
    """Log-odds the policy loses against the raw agent, per instance (D in the module
    docstring); arrays of coefficients give arrays."""
    if features.summarizer == "none":
        return np.zeros_like(np.asarray(b_0, dtype=float))
    scale = params.agent_loss_scale if features.summarizer == "agent" else params.memory_loss_scale
    base = (b_0 + b_m / (1.0 + features.raw_tail)) / features.k
    return scale * base - params.staleness_logit_per_step * features.lag


def marginal_rate(baseline: float, loss: Any, instance_sd: Any) -> Any:
    """Resolve rate over instances, given the raw agent's ``baseline`` and the
    per-instance log-odds change ``loss`` (probit approximation of the logistic-normal
    mean; ``theory.frontier.RESOLVE_RATE``)."""
    c = np.sqrt(1.0 + math.pi * np.asarray(instance_sd, dtype=float) ** 2 / 8.0)
    x = math.log(baseline / (1.0 - baseline)) + np.asarray(loss, dtype=float) / c
    return 1.0 / (1.0 + np.exp(-x))


def extrapolates(features: PolicyFeatures, fit: EffectFit) -> bool:
    """Outside the fitted range of k or of the raw tail (fc never is)."""
    if features.summarizer == "none":
        return False
    k_lo, k_hi = fit.k_range
    m_lo, m_hi = fit.raw_tail_range
    return not (k_lo <= features.k <= k_hi and m_lo <= features.raw_tail <= m_hi)


def _shifts(fit: EffectFit) -> np.ndarray:
    """One run-to-run shift per bootstrap draw: deterministic normal quantiles, in a
    seeded order (the same for every architecture, so differences are paired)."""
    n = len(fit.draws)
    # scipy.stats.norm.ppf is ndtri (scipy/stats/_continuous_distns.py: _norm_ppf),
    # bit for bit; importing scipy.stats costs ~1 s of every `comem run`
    from scipy.special import ndtri

    z = ndtri((np.arange(n) + 0.5) / n)
    return np.random.default_rng(23).permutation(z) * fit.tau


def resolve_rate(
    features: PolicyFeatures,
    params: EffectivenessParams,
    fit: EffectFit | None = None,
    ended_early: float = 0.0,
    summaries_made: float = 1.0,
) -> ResolveRate:
    """The predicted resolve rate of a policy; ``ended_early``: the fraction of its
    tasks a limit ended (they resolve at ``capped_resolve_factor`` of the rate);
    ``summaries_made``: the share of the policy's summaries that happened (a summary an
    engine refused, or one a task too short for k never launched, loses nothing: the
    loss is per summary made, so it scales with the share; 0 is the raw agent)."""
    fit = fit or load_fit()
    if not 0.0 <= summaries_made <= 1.0:
        raise ComemInputError(f"summaries_made must be in [0, 1], got {summaries_made!r}")
    if summaries_made == 0.0:
        features = PolicyFeatures(math.inf, math.inf, 0.0, "none")
    cap = 1.0 - ended_early * (1.0 - params.capped_resolve_factor)
    point = marginal_rate(
        params.baseline_resolve_rate,
        summaries_made * loss_logit(features, params, fit.b_0, fit.b_m),
        fit.instance_sd,
    )
    d = fit.draws
    loss = summaries_made * loss_logit(features, params, d[:, 0], d[:, 1])
    if features.summarizer != "none":
        loss = loss + _shifts(fit)
    draws = marginal_rate(params.baseline_resolve_rate, loss, d[:, 2]) * cap
    return ResolveRate(
        rate=float(point) * cap,
        low=float(np.percentile(draws, 2.5)),
        high=float(np.percentile(draws, 97.5)),
        extrapolated=extrapolates(features, fit),
        draws=draws,
    )


def resolve_delta(rate: ResolveRate, reference: ResolveRate) -> ResolveDelta:
    """``rate`` minus ``reference`` in percentage points, the interval paired by draw."""
    diff = 100.0 * (rate.draws - reference.draws)
    return ResolveDelta(
        pp=100.0 * (rate.rate - reference.rate),
        low=float(np.percentile(diff, 2.5)),
        high=float(np.percentile(diff, 97.5)),
    )


def summary_fields(rate: ResolveRate, delta: ResolveDelta | None) -> dict[str, Any]:
    """The keys ``comem run --json`` and ``comem paper`` rows carry per architecture."""
    out: dict[str, Any] = {
        "resolve_rate": rate.rate,
        "resolve_rate_low": rate.low,
        "resolve_rate_high": rate.high,
        "resolve_rate_extrapolated": rate.extrapolated,
    }
    if delta is not None:
        out |= {
            "resolve_rate_delta_pp": delta.pp,
            "resolve_rate_delta_pp_low": delta.low,
            "resolve_rate_delta_pp_high": delta.high,
        }
    return out


def architecture_effectiveness(
    params: EffectivenessParams,
    policies: dict[str, Any],
    ended_early: dict[str, float],
    reference: str | None,
    fit: EffectFit | None = None,
    summaries_made: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per architecture name: :func:`summary_fields` (deltas against ``reference``, the
    scenario's reference architecture; none without one). ``summaries_made``: per
    architecture, the share of its summaries that were swapped in rather than refused
    (:func:`sim.compare.summaries_made`; 0 where none came back); missing names count 1."""
    made = summaries_made or {}
    rates = {
        name: resolve_rate(
            policy_features(p), params, fit, ended_early.get(name, 0.0), made.get(name, 1.0)
        )
        for name, p in policies.items()
    }
    ref = rates.get(reference) if reference is not None else None
    return {
        name: summary_fields(r, None if ref is None else resolve_delta(r, ref))
        for name, r in rates.items()
    }
