"""The fitted effectiveness model: its map from policies, its predictions, its fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cli_helpers import run_comem

from calibration.errors import ComemInputError
from calibration.report import find_shared
from sim import effectiveness as ef
from sim import effectiveness_fit as fit_mod
from sim.effectiveness import EffectivenessParams, PolicyFeatures, policy_features
from sim.kso import AdaptiveParams
from sim.policy import PolicyParams
from sim.scenario import load_scenario, run_scenario, scenario_from

FIT = ef.load_fit()
P = EffectivenessParams(baseline_resolve_rate=0.4)


def _rate(kind: str, params: EffectivenessParams = P, **kw) -> ef.ResolveRate:
    return ef.resolve_rate(policy_features(PolicyParams(kind=kind, **kw)), params)


def test_committed_fit_states_its_provenance_and_range():
    assert {"source", "command", "date", "module"} <= set(FIT.provenance)
    assert "comem fit-effectiveness" in FIT.provenance["command"]
    assert FIT.k_range[0] >= 1 and FIT.k_range[0] < FIT.k_range[1]
    assert FIT.draws.shape[1] == 3 and len(FIT.draws) >= 100
    # summaries lose: with no raw tail the loss per summary is negative
    assert FIT.b_0 + FIT.b_m < 0


@pytest.mark.parametrize(
    ("kind", "kw", "expected"),
    [
        ("fc", {}, PolicyFeatures(math.inf, math.inf, 0.0, "none")),
        ("cp", {"k": 8, "retain": 3}, PolicyFeatures(8.0, 3.0, 0.0, "agent")),
        ("sm", {"k": 8, "retain": 3}, PolicyFeatures(8.0, 3.0, 0.0, "memory")),
        ("kso", {"k": 8, "retain": 3, "lag": 2}, PolicyFeatures(8.0, 5.0, 2.0, "memory")),
        ("kso-authors", {"retain": 4}, PolicyFeatures(4.0, 0.5, 1.0, "memory")),
        (
            "kso-adaptive",
            {"k": 6, "retain": 2, "lag": 1, "adaptive": AdaptiveParams()},
            PolicyFeatures(6.0, 3.0, 1.0, "memory"),
        ),
    ],
)
def test_the_documented_map_from_policies_to_features(kind, kw, expected):
    assert policy_features(PolicyParams(kind=kind, **kw)) == expected


def test_full_context_is_the_baseline_and_summaries_cost():
    fc = _rate("fc")
    assert fc.rate == fc.low == fc.high == pytest.approx(0.4)
    cp = _rate("cp", k=4, retain=0)
    assert cp.rate < 0.4 and cp.low < cp.rate < cp.high
    delta = ef.resolve_delta(cp, fc)
    assert delta.pp == pytest.approx(100 * (cp.rate - 0.4))
    assert delta.low < delta.pp < delta.high


def test_more_steps_per_summary_and_more_raw_steps_lose_less():
    by_k = [_rate("cp", k=k, retain=0).rate for k in (3, 6, 12, 24)]
    by_retain = [_rate("cp", k=8, retain=r).rate for r in (0, 1, 4, 10)]
    assert np.all(np.diff(by_k) > 0) and np.all(np.diff(by_retain) > 0)
    # KSO's lagged steps stay raw: at equal k, retain and summarizer quality it keeps more
    same = EffectivenessParams(baseline_resolve_rate=0.4)
    assert _rate("kso", same, k=8, retain=2, lag=1).rate > _rate("sm", same, k=8, retain=2).rate


def test_memory_quality_is_a_parameter():
    perfect = EffectivenessParams(baseline_resolve_rate=0.4, memory_loss_scale=0.0)
    worse = EffectivenessParams(baseline_resolve_rate=0.4, memory_loss_scale=2.0)
    assert _rate("kso", perfect, k=4).rate == pytest.approx(0.4)
    assert _rate("kso", worse, k=4).rate < _rate("kso", k=4).rate
    # cp summarizes with the agent model: the memory scale does not touch it
    assert _rate("cp", worse, k=4).rate == _rate("cp", k=4).rate


def test_staleness_and_capped_tasks_are_stated_assumptions():
    stale = EffectivenessParams(baseline_resolve_rate=0.4, staleness_logit_per_step=0.5)
    assert _rate("kso", stale, k=8, lag=2).rate < _rate("kso", k=8, lag=2).rate
    f = policy_features(PolicyParams(kind="fc"))
    assert ef.resolve_rate(f, P, ended_early=0.25).rate == pytest.approx(0.3)
    half = EffectivenessParams(baseline_resolve_rate=0.4, capped_resolve_factor=0.5)
    assert ef.resolve_rate(f, half, ended_early=0.25).rate == pytest.approx(0.35)


def test_outside_the_fitted_range_is_flagged():
    lo, hi = FIT.k_range
    assert _rate("cp", k=int(lo) - 2 if lo > 2 else 1, retain=0).extrapolated
    assert not _rate("cp", k=int(lo) + 1, retain=0).extrapolated
    assert _rate("cp", k=int(hi) + 10, retain=0).extrapolated
    assert not _rate("fc").extrapolated


def test_probit_closed_form_is_close_to_the_logistic_normal_mean():
    """The marginal rate's closed form against Gauss-Hermite quadrature: within 1 point."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / math.sqrt(2 * math.pi)
    s = FIT.instance_sd
    for p0 in (0.2, 0.5, 0.75):
        # the instances' mean log-odds that give p0 under the raw agent
        mus = np.linspace(-8, 8, 4001)
        means = (w[None, :] / (1 + np.exp(-(mus[:, None] + s * z[None, :])))).sum(1)
        mu = np.interp(p0, means, mus)
        for loss in (-0.5, -0.1):
            exact = (w / (1 + np.exp(-(mu + loss + s * z)))).sum()
            assert abs(ef.marginal_rate(p0, loss, s) - exact) < 0.01


def test_scenario_effectiveness_table_and_summary(tmp_path):
    data = {
        "workload": {"agents": 1, "steps": 8},
        "architectures": [{"name": "FC", "kind": "fc"}, {"name": "CP", "kind": "cp", "k": 4}],
    }
    scenario = scenario_from(data, ["effectiveness.baseline_resolve_rate=0.6"], "test")
    archs = run_scenario(scenario).summary()["architectures"]
    assert archs["FC"]["resolve_rate"] == pytest.approx(0.6)
    assert archs["FC"]["resolve_rate_delta_pp"] == 0.0
    cp = archs["CP"]
    assert cp["resolve_rate_low"] < cp["resolve_rate"] < 0.6
    assert cp["resolve_rate_delta_pp_low"] < cp["resolve_rate_delta_pp"] < 0


def test_the_loss_is_per_summary_made():
    """A summary that never happened loses nothing: the log-odds loss scales with the
    share of the policy's summaries swapped in, and none is the raw agent."""
    params = EffectivenessParams(baseline_resolve_rate=0.4)
    features = policy_features(PolicyParams(kind="cp", k=4, retain=0))
    fit = ef.load_fit()
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    full = ef.resolve_rate(features, params)
    half = ef.resolve_rate(features, params, summaries_made=0.5)
    c = math.sqrt(1 + math.pi * fit.instance_sd**2 / 8)
    assert logit(half.rate) - logit(0.4) == pytest.approx((logit(full.rate) - logit(0.4)) / 2)
    assert abs(logit(full.rate) - logit(0.4)) * c > 0.05  # a loss worth halving
    none = ef.resolve_rate(features, params, summaries_made=0.0)
    assert none.rate == none.low == none.high == pytest.approx(0.4)
    with pytest.raises(ComemInputError, match="summaries_made"):
        ef.resolve_rate(features, params, summaries_made=1.5)


def test_tasks_shorter_than_k_make_no_summary_and_lose_nothing():
    from sim.describe import verdict_lines

    data = {
        "workload": {"agents": 2, "steps": 5},
        "architectures": [{"name": "FC", "kind": "fc"}, {"name": "CP", "kind": "cp", "k": 8}],
    }
    summary = run_scenario(scenario_from(data, [], "test")).summary()
    cp = summary["architectures"]["CP"]
    assert cp["summaries_launched"] == cp["summaries_swapped"] == 0
    assert cp["resolve_rate_delta_pp"] == 0.0
    (line,) = verdict_lines(summary, "step")
    assert "CP made no summary" in line and "ran as full context" in line


def test_summaries_an_engine_refuses_cost_nothing_and_the_verdict_says_so():
    """A memory engine whose KV cache cannot hold the later summary prompts refuses
    them: the agent goes on with its full context, its resolve rate loses only for the
    summaries made, and the verdict names the refusals."""
    from sim.describe import verdict_lines

    def summary(capacity: int):  # type: ignore[no-untyped-def]
        data = {
            "workload": {"agents": 1, "steps": 10, "system_tokens": 100,
                         "observation_tokens": 50, "action_tokens": 20, "summary_tokens": 30},
            "architectures": [
                {"name": "FC", "kind": "fc"},
                {"name": "SM", "kind": "sm", "k": 2, "retain": 0,
                 "memory": {"name": "memory", "kv_capacity_tokens": capacity}},
            ],
        }  # fmt: skip
        return run_scenario(scenario_from(data, [], "test")).summary()

    roomy, tight = summary(100_000), summary(500)
    full, cut = roomy["architectures"]["SM"], tight["architectures"]["SM"]
    assert full["summaries_swapped"] == full["summaries_launched"] > 0
    assert full["summary_requests_refused"] == 0
    assert 0 < cut["summaries_swapped"] < cut["summaries_launched"]
    assert cut["summary_requests_refused"] > 0
    share = cut["summaries_swapped"] / cut["summaries_launched"]
    assert full["resolve_rate_delta_pp"] < cut["resolve_rate_delta_pp"] < 0
    assert cut["resolve_rate_delta_pp"] == pytest.approx(
        full["resolve_rate_delta_pp"] * share, rel=0.1
    )
    (line,) = verdict_lines(tight, "step")
    assert f"swapped in {cut['summaries_swapped']} of {cut['summaries_launched']}" in line
    assert "refused by an engine" in line
    assert "refused" not in verdict_lines(roomy, "step")[0]


@pytest.mark.parametrize("value", ["1.5", "0", '"high"'])
def test_a_bad_baseline_is_one_clear_error(value):
    with pytest.raises(ComemInputError, match="baseline_resolve_rate"):
        load_scenario(None, [f"effectiveness.baseline_resolve_rate={value}"])


@pytest.mark.slow
def test_the_fitter_recovers_known_coefficients():
    """Synthetic runs from the model itself (no ../shared): the fit finds b_0, b_m."""
    rng = np.random.default_rng(5)
    ids = tuple(f"i{j}" for j in range(400))
    a = rng.normal(-0.8, 2.0, len(ids))
    b0, bm = -0.5, -3.0
    runs = []
    for n, m, reps in ((0, 0, 3), (3, 0, 2), (7, 0, 2), (21, 0, 2), (21, 10, 2), (5, 5, 2)):
        for rep in range(reps):
            loss = 0.0 if n == 0 else (b0 + bm / (1 + m)) / n
            won = rng.random(len(ids)) < 1 / (1 + np.exp(-(a + loss)))
            runs.append(
                fit_mod.Run(
                    f"r{n}_{m}_{rep}",
                    "g",
                    f"g|{n}|{m}",
                    "raw" if n == 0 else "llm_summary",
                    float(n) if n else math.nan,
                    float(m),
                    ids,
                    frozenset(i for i, w in zip(ids, won, strict=True) if w),
                )
            )
    got = fit_mod.fit_glmm(fit_mod.build(runs))
    assert got.beta[0] + got.beta[1] == pytest.approx(b0 + bm, abs=0.5)
    assert got.sd[0] == pytest.approx(2.0, rel=0.2)
    assert got.beta[1] < 0


@pytest.mark.slow
def test_refit_from_shared_equals_the_committed_estimate():
    shared = find_shared()
    if shared is None or not (shared / "data" / "effectiveness").is_dir():
        pytest.skip("needs ../shared/data/effectiveness (the Complexity Trap runs)")
    runs = fit_mod.read_runs(shared / "data" / "effectiveness")
    got = fit_mod.fit_glmm(fit_mod.build(runs))
    assert got.beta[0] == pytest.approx(FIT.b_0, abs=1e-3)
    assert got.beta[1] == pytest.approx(FIT.b_m, abs=1e-3)


@pytest.mark.slow
def test_fit_command_without_data_is_one_line(tmp_path):
    res = run_comem("fit-effectiveness", "--data", str(tmp_path / "none"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "no such directory" in res.stderr


@pytest.mark.slow
def test_show_prints_the_committed_fit_and_the_map_without_shared():
    import json

    res = run_comem("fit-effectiveness", "--show", "--baseline", "0.7", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["estimate"]["b_m"] == pytest.approx(FIT.b_m)
    rows = {r["architecture"]: r for r in out["architectures"]}
    assert rows["FC"]["resolve_rate"] == pytest.approx(0.7)
    assert rows["KSO k=1 retain=3 lag=1 (1-step-off)"]["resolve_rate_extrapolated"]
    bad = run_comem("fit-effectiveness", "--show", "--baseline", "1.2")
    assert bad.returncode == 2 and "--baseline" in bad.stderr
