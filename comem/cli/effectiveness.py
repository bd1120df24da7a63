"""``comem fit-effectiveness``: refit (or show) the effectiveness model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from comem.cli.args import _add_allow_large, _int_at_least, _non_negative_int
from comem.cli.common import _print_json


def cmd_fit_effectiveness(args: argparse.Namespace) -> int:
    """Refit the effectiveness model from ../shared (or --data), or with --show read the
    committed fit; print its numbers and what it predicts for each architecture."""
    import json as json_mod

    from sim.effectiveness import FIT_PATH, load_fit

    out = Path(args.out) if args.out else FIT_PATH
    if not args.show:
        from calibration.outputs import refuse_foreign_file
        from sim.effectiveness import fit_from_dict

        # ours: what the effectiveness reader accepts (it raises on anything else)
        refuse_foreign_file(out, lambda d: fit_from_dict(d) is not None, "an effectiveness fit")
    if not args.show and args.data:
        from calibration.outputs import refuse_input_as_output

        data = Path(args.data)
        files = [p for p in data.rglob("*") if p.is_file()] if data.is_dir() else [data]
        refuse_input_as_output(str(out), {f"--data ({p.name})": p for p in files[:10_000]})
    if args.show:
        load_fit(out)  # a defect is one line
        report = json_mod.loads(out.read_text())
    else:
        from sim.effectiveness_fit import fit_and_write

        report = fit_and_write(_effectiveness_data(args.data), out, args.draws, args.seed)
    table = _architecture_table(out, args.baseline)
    if args.json:
        _print_json(
            {**{k: v for k, v in report.items() if k != "bootstrap"}, "architectures": table}
        )
        return 0
    est = report["estimate"]
    print(
        f"logit change per instance = (b_0 + b_m / (1 + M)) / k: b_0 = {est['b_0']:.3f},"
        f" b_m = {est['b_m']:.3f}; instance SD {est['instance_sd']:.2f};"
        f" run-to-run tau {est['tau']:.3f}; fitted k {report['fitted_range']['k']},"
        f" raw tail M {report['fitted_range']['raw_tail']}"
    )
    for form, cv in report["cross_validation"].items():
        c = cv["summary"]
        print(
            f"leave-one-configuration-out ({form}): {c['configurations']} configurations,"
            f" MAE {c['mae_pp']:.2f} pp (same-as-raw: {c['mae_raw_pp']:.2f} pp),"
            f" 95% interval coverage {c['coverage_95']:.0%}"
        )
    print(f"at a full-context resolve rate of {args.baseline:.1%}:")
    for row in table:
        print(
            f"  {row['architecture']:<34} k {row['k']:>4}  M {row['raw_tail']:>4}"
            f"  {100 * row['resolve_rate']:5.1f}% [{100 * row['resolve_rate_low']:.1f},"
            f" {100 * row['resolve_rate_high']:.1f}]  {row['resolve_rate_delta_pp']:+5.1f} pp"
            f" [{row['resolve_rate_delta_pp_low']:+.1f}, {row['resolve_rate_delta_pp_high']:+.1f}]"
            + ("  (extrapolated)" if row["resolve_rate_extrapolated"] else "")
        )
    if not args.show:
        print(f"wrote {out}")
    return 0


def _effectiveness_data(given: str | None) -> Path:
    """The runs' directory: ``--data``, or ../shared's (``$COMEM_SHARED``)."""
    from calibration.report import find_shared

    shared = find_shared()
    if given is not None:
        data = Path(given)
    elif shared is not None:
        data = shared / "data" / "effectiveness"
    else:
        raise ComemInputError("fit-effectiveness: no ../shared (set COMEM_SHARED or give --data)")
    if not data.is_dir():
        raise ComemInputError(f"{data}: no such directory (the effectiveness runs; see --data)")
    return data


#: the architectures ``comem fit-effectiveness`` prints predictions for
_EFFECT_EXAMPLES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("FC", {"kind": "fc"}),
    ("CP k=8 retain=3", {"kind": "cp", "k": 8, "retain": 3}),
    ("SM k=8 retain=3", {"kind": "sm", "k": 8, "retain": 3}),
    ("KSO k=8 retain=3 lag=1", {"kind": "kso", "k": 8, "retain": 3, "lag": 1}),
    ("CP k=4 retain=3", {"kind": "cp", "k": 4, "retain": 3}),
    ("KSO k=4 retain=3 lag=1", {"kind": "kso", "k": 4, "retain": 3, "lag": 1}),
    ("KSO k=1 retain=3 lag=1 (1-step-off)", {"kind": "kso", "k": 1, "retain": 3, "lag": 1}),
    ("kso-authors R=4 (GLM-4.7)", {"kind": "kso-authors", "retain": 4}),
    ("kso-authors R=2 (DeepSWE, Qwen)", {"kind": "kso-authors", "retain": 2}),
)


def _architecture_table(path: Path, baseline: float) -> list[dict[str, Any]]:
    """Each example architecture's features and predicted resolve rate against FC."""
    from sim.effectiveness import (
        EffectivenessParams,
        load_fit,
        policy_features,
        resolve_delta,
        resolve_rate,
        summary_fields,
    )
    from sim.policy import PolicyParams

    if not 0.0 < baseline < 1.0:
        raise ComemInputError(f"--baseline: expected a rate in (0, 1), got {baseline}")
    fit = load_fit(path)
    params = EffectivenessParams(baseline_resolve_rate=baseline)
    fc = resolve_rate(policy_features(PolicyParams(kind="fc")), params, fit)
    rows = []
    for name, kw in _EFFECT_EXAMPLES:
        f = policy_features(PolicyParams(**kw))
        rate = resolve_rate(f, params, fit)
        rows.append(
            {"architecture": name, "k": f.k, "raw_tail": f.raw_tail, "lag": f.lag,
             "summarizer": f.summarizer, **summary_fields(rate, resolve_delta(rate, fc))}
        )  # fmt: skip
    return rows


def register(sub: Any) -> None:
    fe = sub.add_parser(
        "fit-effectiveness",
        help="refit the effectiveness model on The Complexity Trap runs (../shared)",
    )
    fe.add_argument(
        "--data",
        help="the runs' directory (default: ../shared/data/effectiveness, or $COMEM_SHARED's)",
    )
    fe.add_argument("--out", help="the fit's JSON (default: sim/data/effectiveness_fit.json)")
    fe.add_argument(
        "--draws", type=_int_at_least(1, 10_000), default=200,
        help="instance-bootstrap draws (1-10000; each is a refit, ~10 s)",
    )  # fmt: skip
    fe.add_argument("--seed", type=_non_negative_int, default=23)
    fe.add_argument(
        "--show", action="store_true", help="print the committed fit (no refit, no ../shared)"
    )
    fe.add_argument(
        "--baseline", type=float, default=0.5, help="full-context resolve rate for the examples"
    )
    fe.add_argument("--json", action="store_true")
    _add_allow_large(fe)
    fe.set_defaults(func=cmd_fit_effectiveness)
