"""Agent workloads: real SWE-bench traces, and distributions fitted to them.

``trace`` replays measured steps of real trajectories (the steps CSV of the shared
data, or any file of that schema): per step the observation the agent reads, the
tokens it decodes (completion, reasoning included) and keeps (visible output), and
the tool time. ``fitted`` samples the same quantities from log-normal distributions
fitted to those traces; the fit is a small committed JSON file, so trace-like runs
work on a fresh clone.

Columns used (see the data's README): ``prompt_tokens`` of step 0 (system + task
prompt), ``completion_tokens``, ``visible_output_tokens``, ``observation_tokens_derived``
(clipped at 0; ``observation_tokens_est_chars4`` where missing), ``tool_time_s`` (where
missing, e.g. the Gemini rows, drawn from the pooled measured tool times with the
scenario's seed).
"""

from __future__ import annotations

import datetime as _dt
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from calibration.errors import ComemInputError
from calibration.inputs import MAX_SECONDS, MAX_TOKENS, InputModel, PathText, Rate, Tokens
from sim.policy import Step, Task

DATA_DIR = Path(__file__).resolve().parent / "data"
FITTED_FILE = DATA_DIR / "swebench_fitted.json"
STEPS_FILE_NAME = "swebench_agent_steps.csv.gz"
DEFAULT_SOURCE = "gemini3pro_mini1.15_verified"
FITTED_VARIABLES = ("steps", "system", "observation", "completion", "kept_fraction", "tool_s")


def default_steps_file() -> Path | None:
    from calibration.report import find_shared

    shared = find_shared()
    if shared is None:
        return None
    p = shared / "data" / "workloads" / STEPS_FILE_NAME
    return p if p.is_file() else None


@lru_cache(maxsize=4)
def load_steps(path: str) -> pd.DataFrame:
    """Read and clean a steps CSV (one row per LLM call)."""
    from calibration.inputs import input_file, numeric_column

    p = input_file(path, "agent-steps")
    needed = [
        "source",
        "trajectory_id",
        "step",
        "prompt_tokens",
        "completion_tokens",
        "visible_output_tokens",
        "observation_tokens_derived",
        "observation_tokens_est_chars4",
        "tool_time_s",
    ]
    try:
        frame = pd.read_csv(p, usecols=needed)
    except (ValueError, pd.errors.ParserError) as exc:  # UnicodeDecodeError included
        raise ComemInputError(f"{p}: not a steps CSV ({exc})") from None
    where = str(p)
    low, high = -MAX_TOKENS, MAX_TOKENS
    frame["step"] = numeric_column(frame, "step", where, low=0, high=MAX_TOKENS, whole=True)
    for col in ("completion_tokens", "visible_output_tokens", "observation_tokens_est_chars4"):
        frame[col] = numeric_column(frame, col, where, low=low, high=high)
    # empty where the source did not measure it (prompt counts, the derived observation,
    # tool times: see the module docstring)
    for col in ("prompt_tokens", "observation_tokens_derived"):
        frame[col] = numeric_column(frame, col, where, low=low, high=high, nullable=True)
    frame["tool_time_s"] = numeric_column(
        frame, "tool_time_s", where, low=-MAX_SECONDS, high=MAX_SECONDS, nullable=True
    )
    obs = frame["observation_tokens_derived"].fillna(frame["observation_tokens_est_chars4"])
    return frame.assign(
        observation=obs.clip(lower=0).round().astype(int),
        completion=frame["completion_tokens"].clip(lower=1).astype(int),
        kept=frame["visible_output_tokens"].clip(lower=0).astype(int),
        tool_s=frame["tool_time_s"].clip(lower=0),
    ).sort_values(["trajectory_id", "step"])


class _Strict(InputModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentLoad(_Strict):
    """What every workload shares: how many agents, tasks and summary tokens."""

    #: concurrent agents (closed loop)
    agents: PositiveInt = 16
    #: tasks each agent runs, one after the other
    tasks_per_agent: PositiveInt = 1
    #: tasks per second arriving as a Poisson process (open loop); None: closed loop,
    #: each of ``agents`` runs its ``tasks_per_agent`` tasks back to back
    arrival_rate_per_s: Rate | None = None
    #: tokens a summary decodes
    summary_tokens: Tokens = 2048


class TraceWorkload(AgentLoad):
    """Replay real SWE-bench agent trajectories (needs the steps CSV)."""

    kind: Literal["trace"] = "trace"
    #: the steps CSV (default: shared/data/workloads/swebench_agent_steps.csv.gz)
    path: PathText | None = None
    #: which agents' trajectories to replay (the CSV's source column)
    sources: list[str] = Field(default=[DEFAULT_SOURCE], min_length=1)
    #: a trajectory is cut after this many steps
    max_steps: PositiveInt = 40

    def tasks(self, rng: np.random.Generator) -> list[list[Task]]:
        path = self.path or default_steps_file()
        if path is None:
            raise ComemInputError(
                "workload.kind = 'trace' needs the SWE-bench steps CSV (workload.path, or"
                " shared/ beside the project); kind = 'fitted' runs without it"
            )
        frame = load_steps(str(path))
        known = sorted(frame["source"].unique())
        bad = [s for s in self.sources if s not in known]
        if bad:
            raise ComemInputError(
                f"workload.sources: unknown source(s) {', '.join(bad)}; known: {', '.join(known)}"
            )
        rows = frame[frame["source"].isin(self.sources)]
        blind = sorted(rows.loc[rows["prompt_tokens"].isna(), "source"].unique())
        if blind:
            raise ComemInputError(
                f"workload.sources: {', '.join(blind)} has no prompt token counts"
                " (the server did not report them); choose another source"
            )
        pool = frame["tool_s"].dropna().to_numpy(float)
        groups = {str(tid): g for tid, g in rows.groupby("trajectory_id", sort=True)}
        ids = sorted(groups)
        picks = rng.choice(len(ids), size=self.agents * self.tasks_per_agent, replace=True)
        tasks = []
        for idx in picks:
            g = groups[ids[int(idx)]].head(self.max_steps)
            obs = g["observation"].to_numpy(int)
            tool = g["tool_s"].to_numpy(float, copy=True)
            missing = np.isnan(tool)
            tool[missing] = rng.choice(pool, size=int(missing.sum())) if pool.size else 0.0
            steps = tuple(
                Step(
                    observation=int(obs[i - 1]) if i else 0,
                    action=int(c),
                    tool_s=float(tool[i]),
                    kept=int(k),
                )
                for i, (c, k) in enumerate(zip(g["completion"], g["kept"], strict=True))
            )
            system = max(1, int(g["prompt_tokens"].iloc[0]))
            tasks.append(Task(system, steps, self.summary_tokens))
        n = self.tasks_per_agent
        return [tasks[a * n : (a + 1) * n] for a in range(self.agents)]


def fit_workload(path: str | Path, sources: list[str] | None = None) -> dict[str, Any]:
    """Fit log-normal distributions to the trace quantities; returns the JSON payload.

    Per variable: ``mu`` and ``sigma`` of log(x) over positive values (maximum likelihood),
    the fraction of zeros, and the Kolmogorov-Smirnov distance of the fit.
    """
    from scipy import stats

    frame = load_steps(str(path))
    sources = sources or [DEFAULT_SOURCE]
    known = sorted(frame["source"].unique())
    bad = [s for s in sources if s not in known]
    if bad:
        raise ComemInputError(
            f"{path}: unknown source(s) {', '.join(bad)}; known: {', '.join(known)}"
        )
    rows = frame[frame["source"].isin(sources)]
    per_traj = rows.groupby("trajectory_id")
    values = {
        "steps": per_traj.size().to_numpy(float),
        "system": per_traj["prompt_tokens"].first().to_numpy(float),
        "observation": rows["observation"].to_numpy(float),
        "completion": rows["completion"].to_numpy(float),
        "kept_fraction": (rows["kept"] / rows["completion"]).clip(upper=1.0).to_numpy(float),
        "tool_s": frame["tool_s"].dropna().to_numpy(float),  # pooled: Gemini rows lack it
    }
    fits = {}
    for name, x in values.items():
        x = x[np.isfinite(x)]
        extra: dict[str, float] = {}
        if name == "kept_fraction":
            # most steps keep everything (no reasoning): a point mass at 1 plus the rest
            extra["one_fraction"] = round(float((x >= 1.0).mean()), 5)
            x = x[x < 1.0]
        pos = x[x > 0]
        if np.unique(pos).size < 2:  # a log-normal needs a spread to fit
            raise ComemInputError(
                f"{path}: {name} has {np.unique(pos).size} distinct positive value(s) in"
                f" {', '.join(sources)}; a fit needs at least 2 (more trajectories)"
            )
        mu, sigma = float(np.log(pos).mean()), float(np.log(pos).std())
        ks = stats.kstest(pos, "lognorm", args=(sigma, 0, np.exp(mu))).statistic
        fits[name] = {
            "dist": "lognormal",
            "mu": round(mu, 5),
            "sigma": round(sigma, 5),
            "zero_fraction": round(float((x <= 0).mean()), 5),
            "n": int(x.size),
            "ks": round(float(ks), 4),
            "median": float(np.median(x)),
            **extra,
        }
    return {
        "schema": 1,
        "sources": sources,
        "provenance": (
            "fitted by sim.workloads.fit_workload on swebench_agent_steps.csv.gz"
            f" (shared/data/workloads), {_dt.date.today().isoformat()}; tool_s pooled over"
            " every source with measured tool times"
        ),
        "variables": fits,
    }


class FittedVariable(BaseModel):
    """One fitted quantity: log-normal ``mu``, ``sigma`` of the positive values, the
    fraction of zeros (and, for ``kept_fraction``, of ones). Other keys (n, ks, median)
    are the fit's record and are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    #: log-space mean; e^25 is 7e10, above every quantity drawn (draws are capped anyway)
    mu: float = Field(ge=-25.0, le=25.0, allow_inf_nan=False)
    sigma: float = Field(ge=0.0, le=10.0, allow_inf_nan=False)
    zero_fraction: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    one_fraction: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)


class FittedFile(BaseModel):
    """A fitted-workload file (:func:`fit_workload`'s payload)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    variables: dict[str, FittedVariable]


@lru_cache(maxsize=2)
def load_fitted(path: str = str(FITTED_FILE)) -> dict[str, Any]:
    """Read and check a fitted-workload file; one line naming the first defect."""
    from calibration.inputs import read_json, validate

    p = Path(path)
    data = read_json(p, "fitted-workload")
    if not isinstance(data, dict):
        raise ComemInputError(
            f"{p}: a fitted-workload file is a JSON object, got {type(data).__name__}"
        )
    variables = data.get("variables")
    if not isinstance(variables, dict):
        raise ComemInputError(f"{p}: 'variables' must map names to fitted distributions")
    missing = [v for v in FITTED_VARIABLES if v not in variables]
    if missing:
        raise ComemInputError(f"{p}: lacks fitted variable(s) {', '.join(missing)}")
    validate(FittedFile, data, str(p))
    return dict(data)


def _draw(spec: dict[str, Any], rng: np.random.Generator, size: int) -> np.ndarray:
    x = rng.lognormal(spec["mu"], spec["sigma"], size)
    u = rng.random(size)
    x = np.where(u < spec["zero_fraction"], 0.0, x)
    if spec.get("one_fraction") is not None:
        x = np.where(rng.random(size) < spec["one_fraction"], 1.0, np.minimum(x, 1.0))
    return x


class FittedWorkload(AgentLoad):
    """Tasks sampled from distributions fitted to the SWE-bench traces (committed)."""

    kind: Literal["fitted"] = "fitted"
    #: the fitted-distribution JSON (default: the committed sim/data/swebench_fitted.json)
    path: PathText | None = None
    #: drawn step counts are capped at this
    max_steps: PositiveInt = 40

    def tasks(self, rng: np.random.Generator) -> list[list[Task]]:
        fit = load_fitted(self.path or str(FITTED_FILE))["variables"]
        # a fit's far tail may draw past what a field may hold: cap it there
        cap = float(MAX_TOKENS)
        out = []
        for _ in range(self.agents):
            own = []
            for _ in range(self.tasks_per_agent):
                n = int(np.clip(np.round(_draw(fit["steps"], rng, 1)[0]), 1, self.max_steps))
                obs = np.round(np.minimum(_draw(fit["observation"], rng, n), cap)).astype(int)
                comp = np.clip(np.round(_draw(fit["completion"], rng, n)), 1, cap).astype(int)
                frac = np.clip(_draw(fit["kept_fraction"], rng, n), 0.0, 1.0)
                tool = np.minimum(_draw(fit["tool_s"], rng, n), MAX_SECONDS)
                system = int(np.clip(np.round(_draw(fit["system"], rng, 1)[0]), 1, cap))
                steps = tuple(
                    Step(
                        observation=int(obs[i - 1]) if i else 0,
                        action=int(comp[i]),
                        tool_s=float(tool[i]),
                        kept=int(round(comp[i] * frac[i])),
                    )
                    for i in range(n)
                )
                own.append(Task(system, steps, self.summary_tokens))
            out.append(own)
        return out


def plot_fitted(steps_csv: str | Path, payload: dict[str, Any], out: str | Path) -> Path:
    """Histograms of the trace quantities with the fitted log-normal densities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    frame = load_steps(str(steps_csv))
    rows = frame[frame["source"].isin(payload["sources"])]
    per_traj = rows.groupby("trajectory_id")
    data = {
        "steps": per_traj.size().to_numpy(float),
        "system": per_traj["prompt_tokens"].first().to_numpy(float),
        "observation": rows["observation"].to_numpy(float),
        "completion": rows["completion"].to_numpy(float),
        "kept_fraction": (rows["kept"] / rows["completion"]).clip(upper=1.0).to_numpy(float),
        "tool_s": frame["tool_s"].dropna().to_numpy(float),
    }
    data["kept_fraction"] = data["kept_fraction"][data["kept_fraction"] < 1.0]
    units = {
        "steps": "steps per task",
        "system": "system + task prompt (tokens)",
        "observation": "observation per step (tokens)",
        "completion": "decoded per step (tokens)",
        "kept_fraction": "kept / decoded (steps that drop some)",
        "tool_s": "tool time per step (s)",
    }
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (name, x) in zip(axes.ravel(), data.items(), strict=True):
        spec = payload["variables"][name]
        pos = x[(x > 0) & np.isfinite(x)]
        logs = np.log10(pos)  # densities in log10 space: what a log-normal fit is about
        ax.hist(logs, bins=50, density=True, alpha=0.5, label="trace (x > 0)")
        grid = np.linspace(logs.min(), logs.max(), 300)
        ln10 = np.log(10.0)
        pdf = stats.norm.pdf(grid, spec["mu"] / ln10, spec["sigma"] / ln10)
        ax.plot(grid, pdf, "k-", lw=1.2, label="fitted log-normal")
        ax.set_xlabel(f"log10 {units[name]}")
        ax.set_ylabel("density of log10 x")
        title = f"{name}: KS {spec['ks']:.3f}, zeros {spec['zero_fraction']:.1%}"
        if spec.get("one_fraction") is not None:
            title += f", ones {spec['one_fraction']:.1%}"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Fitted workload vs SWE-bench traces ({', '.join(payload['sources'])})", fontsize=10
    )
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
