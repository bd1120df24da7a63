"""Sweeps: a base scenario, a grid of overrides, seeds per point; resumable and parallel.

Each finished point is written at once, as ``points/<key>.parquet`` under the output
directory (written to a temporary name, then renamed: a killed run leaves no partial
file). The key is a hash of the point's resolved scenario, replicate index, the files
it reads and the sweep seed (when not 0: the keys of before it was added stay valid),
and the point's seed derives from the sweep seed and that key, so results depend neither
on worker count, nor order, nor scheduler. Re-running the same command skips the
points already on disk; ``results.parquet`` is rebuilt from all of them, one row per
(point, architecture), with every speedup of :mod:`sim.compare` (``speedup_<metric>``,
on comparable work; ``speedup_vs_fc`` is ``speedup_task``) and the tasks that ended
early (``tasks_ended_early``, ``ended_early``).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import re
from collections.abc import Callable, Iterator
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from calibration import limits
from calibration.errors import ComemInputError
from calibration.input_files import files_digest
from sim.config import read_toml
from sim.scenario import Scenario, agent_steps, run_scenario, scenario_from
from sim.workers import process_pool


@dataclass(frozen=True)
class SweepPoint:
    key: str
    index: int
    values: dict[str, Any]
    replicate: int
    scenario: Scenario


@dataclass(frozen=True)
class Sweep:
    path: Path
    points: list[SweepPoint]


def _grid_values(name: str, spec: Any, where: str) -> list[Any]:
    if isinstance(spec, list):
        if not spec:
            raise ComemInputError(f"{where}: grid.{name} is empty")
        kinds = {"number" if isinstance(v, int | float) and not isinstance(v, bool)
                 else type(v).__name__ for v in spec}  # fmt: skip
        if len(kinds) > 1:  # one table column per axis: its values must be of one kind
            raise ComemInputError(
                f"{where}: grid.{name} mixes {' and '.join(sorted(kinds))} values ({spec!r});"
                " give every value of an axis the same type"
            )
        return spec
    if isinstance(spec, dict) and set(spec) <= {"start", "stop", "step"} and "stop" in spec:
        start, stop, step = spec.get("start", 0), spec["stop"], spec.get("step", 1)
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in (start, stop, step)
        ):
            raise ComemInputError(
                f"{where}: grid.{name} range needs finite numbers (start, stop, step),"
                f" got {start}..{stop} by {step}"
            )
        if step <= 0 or stop < start:
            raise ComemInputError(
                f"{where}: grid.{name} range is empty ({start}..{stop} by {step})"
            )
        # count before building: a range of a billion values is refused, not made
        count = math.floor((stop - start) / step + 1e-9) + 1
        limits.check(
            limits.SWEEP_POINTS, count, f"{where}: grid.{name} ({start}..{stop} by {step})"
        )
        values = []
        v = start
        while v <= stop + 1e-12:
            values.append(v)
            v = v + step
        return values
    raise ComemInputError(
        f"{where}: grid.{name} must be a list or a range {{start, stop, step}}, got {spec!r}"
    )


def point_key(
    scenario: Scenario, replicate: int, files: bool = False, sweep_seed: int | None = None
) -> str:
    """Hash of the resolved scenario (seed excluded) and the replicate index; with
    ``files``, also of the bytes of every file it reads (a trace, a profile, a model's
    config.json; the same key when it reads none): the name of its point file, so a
    point computed from a file since changed is simulated again, not read back; and of a
    ``sweep_seed`` other than 0 (another seed must not read the first's points back)."""
    body = scenario.model_dump_json(exclude={"seed"})
    extra = files_digest(scenario.model_dump()) if files else ""
    tail = f"|{extra}" if extra else ""
    seed = f"|seed {sweep_seed}" if sweep_seed else ""
    return hashlib.sha256(f"{body}|{replicate}{tail}{seed}".encode()).hexdigest()[:16]


def point_seed(sweep_seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{sweep_seed}|{key}".encode()).hexdigest()[:8], 16)


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


SWEEP_KEYS = ("base", "grid", "set", "seeds", "seed", "description")


def base_path(path: str | Path) -> Path:
    """The base scenario file a sweep file names (its ``base``, relative to it)."""
    p = Path(path)
    base = read_toml(p, "sweep").get("base")
    if not isinstance(base, str) or not base.strip() or "\x00" in base:
        raise ComemInputError(f"{p.name}: 'base' must name a scenario file, got {base!r}")
    return (p.parent / base).resolve()


def _dotted(table: dict[str, Any], prefix: str = "") -> set[str]:
    """The field paths a TOML table sets (``workload.agents = 3`` and ``[set.workload]
    agents = 3`` both give ``workload.agents``)."""
    out: set[str] = set()
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _dotted(value, f"{path}.")
        out.add(path)
    return out


def _leaves(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(field path, value) of a TOML table's values: a nested table sets its fields one by
    one; one naming a ``kind`` replaces the base's table whole; an empty one, nothing."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict) and not value:
            continue  # sets nothing (it would replace the base's table with the defaults)
        if isinstance(value, dict) and "kind" not in value:
            out += _leaves(value, f"{prefix}{key}.")
        else:  # a value, or a table of another kind: replaces the base's table whole
            out.append((f"{prefix}{key}", value))
    return out


def _refuse_set_and_grid(
    fixed: dict[str, Any], extra_sets: list[str], grid: dict[str, Any], where: str
) -> None:
    """A field both set (``[set]`` or a command-line flag) and swept: the grid's value
    would win at every point and the other be dropped without a word."""
    given = {p: "[set]" for p in _dotted(fixed)}
    given |= {item.split("=", 1)[0].strip(): "a command-line flag" for item in extra_sets}
    for path in sorted(grid):
        if path in given:
            raise ComemInputError(
                f"{where}: {path!r} is in both {given[path]} and [grid]: keep it in one of them"
            )


def load_sweep(path: str | Path, extra_sets: list[str] | None = None) -> Sweep:
    """Read a sweep file and resolve (validate) every point before anything runs: its
    size and every point's cost are checked (:mod:`calibration.limits`) before the
    points are made. ``extra_sets``: overrides after the file's ``[set]`` (the
    command line's workload flags), before each point's grid values."""
    p = Path(path)
    data = read_toml(p, "sweep")
    where = p.name
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        hints = [difflib.get_close_matches(k, SWEEP_KEYS, n=1) for k in unknown]
        hint = "".join(f"; did you mean '{h[0]}'?" for h in hints if h)
        raise ComemInputError(f"{where}: unknown key(s) {', '.join(unknown)}{hint}")
    base = data.get("base")
    if not isinstance(base, str) or not base.strip() or "\x00" in base:
        raise ComemInputError(f"{where}: 'base' must name a scenario file, got {base!r}")
    base_path = (p.parent / base).resolve()
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ComemInputError(f"{where}: 'grid' must map fields to lists or ranges")
    fixed_table = data.get("set", {})
    if not isinstance(fixed_table, dict):
        raise ComemInputError(
            f"{where}: 'set' must map fields to values ([set] \"workload.steps\" = 8),"
            f" got {fixed_table!r}"
        )
    seeds = data.get("seeds", 1)
    sweep_seed = data.get("seed", 0)
    if not _whole(seeds, 1):
        raise ComemInputError(f"{where}: 'seeds' must be a whole number >= 1, got {seeds!r}")
    if not _whole(sweep_seed, 0):
        raise ComemInputError(f"{where}: 'seed' must be a whole number >= 0, got {sweep_seed!r}")
    if not isinstance(data.get("description", ""), str):
        raise ComemInputError(f"{where}: 'description' must be a string")
    for table, keys in (("set", fixed_table), ("grid", grid)):
        for key in keys:
            if not key.strip() or "=" in key:
                raise ComemInputError(f"{where}: {table} key {key!r} is no field path")
    _refuse_set_and_grid(fixed_table, extra_sets or [], grid, where)
    # a nested table ([set.workload] or workload.tool_s = 0.2) sets its fields one by one:
    # as one override it would replace the base scenario's whole table
    fixed = [f"{k}={_toml_value(v, f'{where}: set.{k}')}" for k, v in _leaves(fixed_table)]
    fixed += extra_sets or []
    names = list(grid)
    values = [_grid_values(n, grid[n], where) for n in names]
    limits.check(
        limits.SWEEP_POINTS,
        math.prod(len(v) for v in values) * seeds,
        f"{where}: the grid ({' x '.join(str(len(v)) for v in values)}) x {seeds} seed(s)",
    )
    base_data = read_toml(base_path, "scenario")
    points = []
    labels: dict[str, str] = {}  # point key -> the first grid point that resolved to it
    total_steps = 0
    for index, combo in enumerate(itertools.product(*values)):
        sets = fixed + [
            f"{n}={_toml_value(v, f'{where}: grid.{n}')}" for n, v in zip(names, combo, strict=True)
        ]
        label = ", ".join(f"{n}={v!r}" for n, v in zip(names, combo, strict=True))
        scenario = scenario_from(base_data, sets, f"{where}: point {index} ({label}): {base}")
        total_steps += agent_steps(scenario)[0] * seeds
        same = labels.setdefault(point_key(scenario, 0), f"point {index} ({label})")
        if same != f"point {index} ({label})":
            # one point file per scenario: a second point that resolves to the same one
            # would be run once and counted once, a point silently dropped
            raise ComemInputError(
                f"{where}: point {index} ({label}) is the same scenario as {same}"
                " (a value repeated in the grid?); list each value once"
            )
        for rep in range(seeds):
            # the seed from the settings alone (a file's new bytes change no draw)
            seed = point_seed(sweep_seed, point_key(scenario, rep))
            seeded = scenario.model_copy(update={"seed": seed})
            # the sweep's seed is in the file's name: a re-run with another seed into the
            # same --out simulates again instead of reading the old seed's points back
            key = point_key(scenario, rep, files=True, sweep_seed=sweep_seed)
            points.append(SweepPoint(key, index, dict(zip(names, combo, strict=True)), rep, seeded))
    limits.check(limits.SWEEP_AGENT_STEPS, total_steps, f"{where}: all {len(points)} points")
    return Sweep(p, points)


def _toml_value(v: Any, where: str) -> str:
    """A grid or set value as a ``--set`` value (JSON; strings as they are)."""
    import json

    try:
        return json.dumps(v)
    except (TypeError, ValueError):  # a TOML date or time: no scenario field takes one
        raise ComemInputError(f"{where}: {v!r} is no scenario value (a date or time?)") from None


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def run_point(point: SweepPoint, out_dir: str) -> str:
    """Simulate one point and write its rows; returns the file written.

    A point that fails is written too, as one row with its ``error`` (to
    ``<key>.failed.parquet``, so a re-run tries it again): one bad point costs its own
    row, not the sweep."""
    points = Path(out_dir) / "points"
    try:
        rows = _point_rows(point)
    except Exception as exc:  # recorded, whatever it is; the other points go on
        message = str(exc).splitlines()[0] if str(exc) else ""
        kind = "" if isinstance(exc, ComemInputError) else f"{type(exc).__name__}: "
        row = {
            "key": point.key,
            "point": point.index,
            "replicate": point.replicate,
            "seed": point.scenario.seed,
            "architecture": None,
            **{f"grid.{k}": v for k, v in point.values.items()},
            "error": f"{kind}{message}" or type(exc).__name__,
        }
        return _write_point([row], points / f"{point.key}{FAILED_SUFFIX}")
    written = _write_point(rows, points / f"{point.key}.parquet")
    (points / f"{point.key}{FAILED_SUFFIX}").unlink(missing_ok=True)
    return written


#: the file name ending of a failed point's row
FAILED_SUFFIX = ".failed.parquet"


def _write_point(rows: list[dict[str, Any]], target: Path) -> str:
    from calibration.outputs import write_atomic

    # atomic: a killed run never leaves a partial point
    frame = pd.DataFrame(rows)
    write_atomic(target, lambda tmp: frame.to_parquet(tmp, index=False), "sweep point")
    return str(target)


def _point_rows(point: SweepPoint) -> list[dict[str, Any]]:
    summary = run_scenario(point.scenario).summary()
    speedups = summary["comparison"]["metrics"]
    rows = []
    for index, (arch, metrics) in enumerate(summary["architectures"].items()):
        early = metrics["ended_early"]
        rows.append(
            {
                "key": point.key,
                "point": point.index,
                "replicate": point.replicate,
                "seed": point.scenario.seed,
                "architecture": arch,
                # its place in the scenario's list: which architecture a grid axis
                # ``architectures.<index>.<field>`` varies
                "architecture_index": index,
                **{f"grid.{k}": v for k, v in point.values.items()},
                **{k: v for k, v in metrics.items() if k != "ended_early"},
                # why tasks ended early, e.g. "context_exceeded 3" ("" if none did)
                "ended_early": ", ".join(f"{k} {v}" for k, v in early.items()),
                # speedups on comparable work (sim.compare); NaN where nothing compares
                "speedup_vs_fc": _number(summary["speedup_vs_fc"].get(arch)),
                **{
                    f"speedup_{name.replace('-', '_')}": _number(m["speedup"].get(arch))
                    for name, m in speedups.items()
                },
                "error": "",
            }
        )
    return rows


def pending(sweep: Sweep, out_dir: str | Path) -> list[SweepPoint]:
    """Points without a finished file (a failed point is tried again)."""
    done = {f.stem for f in (Path(out_dir) / "points").glob("*.parquet")}
    return [pt for pt in sweep.points if pt.key not in done]


def collect(sweep: Sweep, out_dir: str | Path) -> pd.DataFrame:
    """The final table: every point exactly once, in grid order; a failed point is one
    row with its ``error`` (``error`` is "" on every other row)."""
    frames = []
    points = Path(out_dir) / "points"
    for pt in sweep.points:
        for f in (points / f"{pt.key}.parquet", points / f"{pt.key}{FAILED_SUFFIX}"):
            if f.is_file():
                try:
                    frames.append(pd.read_parquet(f))
                except Exception as exc:  # pyarrow raises many kinds for a damaged file
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise ComemInputError(
                        f"{f}: not a readable point file ({first}); delete it and re-run"
                        " the sweep to simulate that point again"
                    ) from None
                break
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(table):
        table = table.sort_values(["point", "replicate", "architecture"], ignore_index=True)
        from calibration.outputs import write_atomic

        # renamed into place: a killed write keeps the last whole table (its temporary
        # file under points/, whose temporary files a re-run clears)
        write_atomic(Path(out_dir) / "results.parquet",
                     lambda tmp: table.to_parquet(tmp, index=False), "sweep results",
                     Path(out_dir) / "points")  # fmt: skip
    return table


def failed_points(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of points that failed (``collect``'s table)."""
    if "error" not in table.columns:
        return table.iloc[0:0]
    return table[table["error"].fillna("") != ""]


def _iterate_local(todo: list[SweepPoint], out: str, workers: int) -> Iterator[str]:
    if workers <= 1:
        for pt in todo:
            yield run_point(pt, out)
        return
    with process_pool(workers) as pool:
        futures = [pool.submit(run_point, pt, out) for pt in todo]
        for fut in as_completed(futures):
            yield fut.result()


def _iterate_dask(todo: list[SweepPoint], out: str, scheduler: str, workers: int) -> Iterator[str]:
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError:
        raise ComemInputError(
            "--scheduler needs dask.distributed: pip install 'comem-sim[dask]'"
        ) from None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ComemInputError(
                f"--scheduler {scheduler}: cannot connect ({reason}); expected 'local' or a"
                " Dask scheduler address such as tcp://HOST:8786"
            ) from None
        cluster = None
    try:
        futures = client.map(run_point, todo, out_dir=out, pure=False)
        for fut in dask_completed(futures):
            yield fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path,
    workers: int = 1,
    scheduler: str | None = None,
    on_point: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run the points not yet on disk, then collect the full table."""
    from calibration.outputs import writable_dir

    out = writable_dir(Path(out_dir) / "points", "--out").parent
    for stale in (out / "points").glob("*.tmp*"):  # left by a killed run
        stale.unlink()
    todo = pending(sweep, out)
    workers = max(1, min(workers, len(todo)))
    total = len(sweep.points)
    done = total - len(todo)
    if on_point is not None:
        on_point(done, total)
    runner = (
        _iterate_dask(todo, str(out), scheduler, workers)
        if scheduler
        else _iterate_local(todo, str(out), workers)
    )
    for _ in runner:
        done += 1
        if on_point is not None:
            on_point(done, total)
    return collect(sweep, out)


def _axes(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("grid.")]


def _on_edge(value: Any, values: list[Any]) -> bool:
    """A value at the smallest or largest of a numeric axis (the grid cannot say what
    lies beyond it)."""
    numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return len(numeric) == len(values) >= 2 and value in (min(numeric), max(numeric))


def _varied_architectures(table: pd.DataFrame, k_axis: str) -> set[str] | None:
    """The architectures whose k the axis ``grid.architectures.<i>.k`` sets (None: not
    known, a table written before rows carried ``architecture_index``; a ``.k`` axis of
    another form varies them all)."""
    match = re.fullmatch(r"grid\.architectures\.(\d+)\.k", k_axis)
    if match is None:
        return set(table["architecture"])
    if "architecture_index" not in table.columns:
        return None
    chosen = table[table["architecture_index"] == int(match.group(1))]
    return set(chosen["architecture"])


def _with_fc_early(table: pd.DataFrame, ok: pd.DataFrame) -> pd.DataFrame:
    """``ok`` with ``fc_tasks_ended_early``: the tasks its point's full-context run ended
    early (the speedup is over the steps both ran, so FC's short tasks move it too)."""
    if "tasks_ended_early" not in table.columns:
        return ok
    fc = table[table["kind"] == "fc"]
    per_point = fc.groupby("point")["tasks_ended_early"].max()
    return ok.assign(fc_tasks_ended_early=ok["point"].map(per_point).fillna(0))


def summary(table: pd.DataFrame, metric: str = "step") -> dict[str, Any]:
    """What a sweep answers, per grid point and CoMem-style architecture: the speedup
    over full context by ``metric`` and the resolve-rate change (means over seeds); the
    best k per point of the other axes where the grid has a k axis; and the winner, with
    the axes on whose edge it sits."""
    col = f"speedup_{metric.replace('-', '_')}"
    ran = len(table) and "kind" in table.columns  # a table of failed points has no results
    ok = table[(table["error"].fillna("") == "") & (table["kind"] != "fc")] if ran else table
    axes = _axes(table)
    if not len(ok) or col not in ok.columns:
        return {"metric": metric, "rows": [], "best_k": [], "winner": None}
    ok = _with_fc_early(table, ok)
    grouped = ok.groupby(["point", "architecture", *axes], dropna=False, sort=True)
    early = ["tasks_ended_early", "fc_tasks_ended_early"]
    kept = [col, "resolve_rate_delta_pp"] + [c for c in early if c in ok]
    means = grouped[kept].mean().rename(columns={col: "speedup"})
    # the spread over seeds: a best k whose seeds overlap another k's is not told apart
    spread = grouped[col].agg(["min", "max", "count"])
    means = means.join(
        spread.rename(columns={"min": "speedup_min", "max": "speedup_max", "count": "seeds"})
    )
    if "resolve_rate_extrapolated" in ok:  # k or M outside the effectiveness fit's range
        means = means.join(grouped["resolve_rate_extrapolated"].any())
    means = means.reset_index()
    values = {a: sorted(table[a].dropna().unique().tolist()) for a in axes}
    rows = means.to_dict("records")
    best_k: list[dict[str, Any]] = []
    k_axis = next((a for a in axes if a.endswith(".k")), None)
    varied: set[str] | None = None
    if k_axis is not None:
        others = [a for a in axes if a != k_axis]
        varied = _varied_architectures(ok, k_axis)
        for _, group in means.groupby(["architecture", *others], dropna=False, sort=True):
            if varied is not None and group["architecture"].iloc[0] not in varied:
                continue  # its k is not the axis: a "best k" would be seed noise
            ranked = group.sort_values("speedup", ascending=False)
            top: dict[str, Any] = {str(k): v for k, v in ranked.iloc[0].items()}
            top["edge"] = _on_edge(top[k_axis], values[k_axis])
            # other k whose seeds reach the best one's: within its seed spread
            top["ties"] = [
                other[k_axis]
                for _, other in ranked.iloc[1:].iterrows()
                if top["seeds"] > 1 and other["speedup_max"] >= top["speedup_min"]
            ]
            best_k.append(top)
    finite = means[means["speedup"].notna()]
    winner = None
    if len(finite):
        winner = finite.sort_values("speedup", ascending=False).iloc[0].to_dict()
        # a k axis that does not set the winner's k does not locate it
        fixed_k = k_axis is not None and varied is not None and winner["architecture"] not in varied
        winner["axes"] = [a for a in axes if not (fixed_k and a == k_axis)]
        winner["edge"] = [
            a[len("grid.") :] for a in winner["axes"] if _on_edge(winner[a], values[a])
        ]
    return {"metric": metric, "axes": axes, "rows": rows, "best_k": best_k, "winner": winner}
