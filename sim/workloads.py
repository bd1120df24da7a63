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
scenario's seed). The CSV is read and checked by :func:`sim.trace_steps.load_steps`.
"""

from __future__ import annotations

import datetime as _dt
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from calibration.errors import ComemInputError
from calibration.inputs import MAX_SECONDS, MAX_TOKENS, InputModel, PathText, Rate, Tokens
from sim.actions import Step, Task
from sim.trace_steps import load_steps

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


class _Strict(InputModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Arrivals = Literal["closed-loop", "closed-batch", "poisson"]


class AgentLoad(_Strict):
    """What every workload shares: how many agents, tasks and summary tokens, and how
    tasks arrive.

    ``arrivals``: ``closed-loop``, each of ``agents`` runs its ``tasks_per_agent`` tasks
    back to back (a finished task is replaced by the agent's next); ``closed-batch``, all
    ``agents * tasks_per_agent`` tasks start at time 0 and none is replaced (the CoMem
    authors' 128-task runs, AUTHORS_SETUP.md); ``poisson``, tasks arrive at
    ``arrival_rate_per_s`` (open loop). Left out, it is ``poisson`` when a rate is given,
    else ``closed-loop`` (what a rate alone always meant).
    """

    #: concurrent agents (closed loop)
    agents: PositiveInt = 16
    #: tasks each agent runs, one after the other
    tasks_per_agent: PositiveInt = 1
    #: closed-loop: each agent runs its tasks back to back; closed-batch: all tasks start
    #: at once and are not replaced (the authors' 128-task runs); poisson: tasks arrive
    #: at arrival_rate_per_s
    arrivals: Arrivals = "closed-loop"
    #: tasks per second of the Poisson arrivals (``arrivals = "poisson"``)
    arrival_rate_per_s: Rate | None = None
    #: tokens a summary decodes
    summary_tokens: Tokens = 2048

    @model_validator(mode="before")
    @classmethod
    def _arrivals_from_rate(cls, data: Any) -> Any:
        rate_only = isinstance(data, dict) and "arrivals" not in data
        if rate_only and data.get("arrival_rate_per_s") is not None:
            return {**data, "arrivals": "poisson"}
        return data

    @model_validator(mode="after")
    def _rate_matches_arrivals(self) -> AgentLoad:
        if self.arrivals == "poisson" and self.arrival_rate_per_s is None:
            raise ValueError("arrivals = 'poisson' needs arrival_rate_per_s")
        if self.arrivals != "poisson" and self.arrival_rate_per_s is not None:
            raise ValueError(
                f"arrival_rate_per_s is for arrivals = 'poisson', not '{self.arrivals}'"
            )
        return self


class TraceWorkload(AgentLoad):
    """Replay real SWE-bench agent trajectories (needs the steps CSV).

    ``keep_reasoning``: every decoded token stays in the context (the CoMem authors'
    agents: GLM thinking preserved, DeepSWE's ``<think>`` text kept); else only the
    visible output does. ``system_tokens``: the system and task prompt, for sources whose
    server did not report prompt tokens (the GLM-4.6 OpenHands rows); None: each
    trajectory's first prompt.
    """

    kind: Literal["trace"] = "trace"
    #: the steps CSV (default: shared/data/workloads/swebench_agent_steps.csv.gz)
    path: PathText | None = None
    #: which agents' trajectories to replay (the CSV's source column)
    sources: list[str] = Field(default=[DEFAULT_SOURCE], min_length=1)
    #: a trajectory is cut after this many steps
    max_steps: PositiveInt = 40
    keep_reasoning: bool = False
    system_tokens: PositiveInt | None = None

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
        if blind and self.system_tokens is None:
            raise ComemInputError(
                f"workload.sources: {', '.join(blind)} has no prompt token counts"
                " (the server did not report them); set workload.system_tokens or choose"
                " another source"
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
                    kept=None if self.keep_reasoning else int(k),
                )
                for i, (c, k) in enumerate(zip(g["completion"], g["kept"], strict=True))
            )
            system = self.system_tokens or max(1, int(g["prompt_tokens"].iloc[0]))
            tasks.append(Task(system, steps, self.summary_tokens))
        n = self.tasks_per_agent
        return [tasks[a * n : (a + 1) * n] for a in range(self.agents)]


def trace_values(
    frame: pd.DataFrame, sources: list[str], variable_sources: dict[str, list[str]] | None = None
) -> dict[str, np.ndarray]:
    """The quantities a fitted workload samples, from the steps of ``sources``.

    ``variable_sources`` takes a variable from other sources (e.g. the system prompt from
    a source that reports prompt tokens when the chosen one does not). ``tool_s`` is
    pooled over every source with measured tool times unless given there.
    """
    overrides = variable_sources or {}
    unknown = sorted(set(overrides) - set(FITTED_VARIABLES))
    if unknown:
        raise ComemInputError(
            f"variable source(s) for unknown variable(s) {', '.join(unknown)};"
            f" known: {', '.join(FITTED_VARIABLES)}"
        )
    known = set(frame["source"].unique())
    for chosen in [sources, *overrides.values()]:
        bad = sorted(set(chosen) - known)
        if bad:
            raise ComemInputError(
                f"unknown source(s) {', '.join(bad)}; trace sources: {', '.join(sorted(known))}"
            )

    def rows_for(name: str) -> pd.DataFrame:
        return frame[frame["source"].isin(overrides.get(name, sources))]

    def per_traj(name: str) -> Any:
        return rows_for(name).groupby("trajectory_id")

    kept = rows_for("kept_fraction")
    tool_rows = rows_for("tool_s") if "tool_s" in overrides else frame
    values = {
        "steps": per_traj("steps").size().to_numpy(float),
        "system": per_traj("system")["prompt_tokens"].first().to_numpy(float),
        "observation": rows_for("observation")["observation"].to_numpy(float),
        "completion": rows_for("completion")["completion"].to_numpy(float),
        "kept_fraction": (kept["kept"] / kept["completion"]).clip(upper=1.0).to_numpy(float),
        "tool_s": tool_rows["tool_s"].dropna().to_numpy(float),
    }
    for name, x in values.items():
        if not np.isfinite(x).any():
            raise ComemInputError(
                f"workload fit: no {name} values in source(s)"
                f" {', '.join(overrides.get(name, sources))} (take it from another source)"
            )
    return values


def fit_lognormal_mixture(pos: np.ndarray, iterations: int = 500) -> dict[str, Any]:
    """Two log-normal components by EM on log(x) (deterministic start: the quartiles).

    For a bimodal quantity: GLM-4.6's decode per step is a mode of short tool calls
    (~60 tokens) and a long one of reasoning and file writes (~400), which one log-normal
    misses (KS 0.22; the mixture, see the fit's ``ks``)."""
    y = np.log(pos)
    mu = np.quantile(y, [0.25, 0.75])
    sd = np.full(2, y.std() / 2)
    w = np.array([0.5, 0.5])
    with np.errstate(all="ignore"):  # a collapsing component is checked below, not warned
        for _ in range(iterations):
            dens = w * np.exp(-0.5 * ((y[:, None] - mu) / sd) ** 2) / sd
            resp = dens / dens.sum(axis=1, keepdims=True)
            n_k = resp.sum(axis=0)
            w = n_k / y.size
            mu = (resp * y[:, None]).sum(axis=0) / n_k
            sd = np.sqrt((resp * (y[:, None] - mu) ** 2).sum(axis=0) / n_k)
    if not (np.isfinite(w).all() and np.isfinite(mu).all() and (sd > 0).all()):
        raise ValueError(
            "two log-normal components do not fit these values (one collapsed onto a"
            " single value); fit it as one log-normal (leave it out of --mixture)"
        )
    return {
        "weights": [round(float(v), 5) for v in w],
        "mus": [round(float(v), 5) for v in mu],
        "sigmas": [round(float(v), 5) for v in sd],
    }


def _mixture_cdf(spec: dict[str, Any]) -> Any:
    from scipy import stats

    def cdf(x: np.ndarray) -> np.ndarray:
        return sum(
            w * stats.lognorm.cdf(x, s, 0, np.exp(m))
            for w, m, s in zip(spec["weights"], spec["mus"], spec["sigmas"], strict=True)
        )

    return cdf


def fit_workload(
    path: str | Path,
    sources: list[str] | None = None,
    variable_sources: dict[str, list[str]] | None = None,
    mixtures: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fit log-normal distributions to the trace quantities; returns the JSON payload.

    Per variable: ``mu`` and ``sigma`` of log(x) over positive values (maximum likelihood),
    the fraction of zeros, and the Kolmogorov-Smirnov distance of the fit; the variables
    in ``mixtures`` get two log-normal components instead (:func:`fit_lognormal_mixture`).
    ``variable_sources``: see :func:`trace_values`.
    """
    from scipy import stats

    unknown = sorted(set(mixtures) - set(FITTED_VARIABLES))
    if unknown:
        raise ComemInputError(
            f"mixture for unknown variable(s) {', '.join(unknown)};"
            f" known: {', '.join(FITTED_VARIABLES)}"
        )
    frame = load_steps(str(path))
    sources = sources or [DEFAULT_SOURCE]
    values = trace_values(frame, sources, variable_sources)
    fits = {}
    for name, x in values.items():
        x = x[np.isfinite(x)]
        extra: dict[str, float] = {}
        if name == "kept_fraction":
            # most steps keep everything (no reasoning): a point mass at 1 plus the rest
            extra["one_fraction"] = round(float((x >= 1.0).mean()), 5)
            x = x[x < 1.0]
        pos = x[x > 0]
        if pos.size == 0:  # e.g. a source that keeps every decoded token: all mass at 1
            mu = sigma = ks = 0.0
        elif np.unique(pos).size < 2:  # a log-normal needs a spread to fit
            raise ComemInputError(
                f"{path}: {name} has {np.unique(pos).size} distinct positive value(s) in"
                f" {', '.join(sources)}; a fit needs at least 2 (more trajectories)"
            )
        else:
            mu, sigma = float(np.log(pos).mean()), float(np.log(pos).std())
            ks = stats.kstest(pos, "lognorm", args=(sigma, 0, np.exp(mu))).statistic
        fits[name] = {
            "dist": "lognormal",
            "mu": round(mu, 5),
            "sigma": round(sigma, 5),
            "zero_fraction": round(float((x <= 0).mean()), 5) if x.size else 0.0,
            "n": int(x.size),
            "ks": round(float(ks), 4),
            "median": float(np.median(x)) if x.size else 1.0,
            **extra,
        }
        if name in mixtures and pos.size:
            try:
                mix = fit_lognormal_mixture(pos)
            except ValueError as exc:
                raise ComemInputError(f"{path}: {name}: {exc}") from None
            ks = stats.kstest(pos, _mixture_cdf(mix)).statistic
            fits[name] |= {"dist": "lognormal-mixture", **mix, "ks": round(float(ks), 4)}
    payload: dict[str, Any] = {
        "schema": 1,
        "sources": sources,
        "provenance": (
            "fitted by sim.workloads.fit_workload on swebench_agent_steps.csv.gz"
            f" (shared/data/workloads), {_dt.date.today().isoformat()}; tool_s pooled over"
            " every source with measured tool times unless variable_sources names them"
        ),
        "variables": fits,
    }
    if variable_sources:
        payload["variable_sources"] = {k: list(v) for k, v in sorted(variable_sources.items())}
    # what comem writes, comem must read: the payload passes the reader's own checks
    check_fitted(payload, f"workload fit of {path} (nothing written)")
    return payload


class FittedVariable(BaseModel):
    """One fitted quantity: log-normal ``mu``, ``sigma`` of the positive values, the
    fraction of zeros (and, for ``kept_fraction``, of ones); ``n``, ``ks``, ``median``
    are the fit's record. Any other key is a misspelling, refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the fit's record of its data: sample size, KS distance, median (kept as they are)
    n: float | None = None
    ks: float | None = None
    median: float | None = None
    #: log-space mean; e^25 is 7e10, above every quantity drawn (draws are capped anyway)
    mu: float = Field(ge=-25.0, le=25.0, allow_inf_nan=False)
    sigma: float = Field(ge=0.0, le=10.0, allow_inf_nan=False)
    zero_fraction: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    one_fraction: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    #: "lognormal", or "lognormal-mixture": two components, each with its weight, mu, sigma
    dist: Literal["lognormal", "lognormal-mixture"] = "lognormal"
    weights: list[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]] | None = None
    mus: list[Annotated[float, Field(ge=-25.0, le=25.0, allow_inf_nan=False)]] | None = None
    sigmas: list[Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)]] | None = None

    @model_validator(mode="after")
    def _mixture(self) -> FittedVariable:
        if self.dist == "lognormal-mixture" and not all(
            v is not None and len(v) == 2 for v in (self.weights, self.mus, self.sigmas)
        ):
            raise ValueError("a mixture needs 2 weights, mus and sigmas")
        return self


class FittedFile(BaseModel):
    """A fitted-workload file (:func:`fit_workload`'s payload)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the file format this reader knows
    schema_: Literal[1] = Field(alias="schema")
    sources: list[str] | None = None
    variable_sources: dict[str, list[str]] | None = None
    provenance: str | dict[str, Any] | None = None
    note: str | None = None
    variables: dict[str, FittedVariable]


@lru_cache(maxsize=2)
def load_fitted(path: str = str(FITTED_FILE)) -> dict[str, Any]:
    """Read and check a fitted-workload file; one line naming the first defect."""
    from calibration.inputs import read_json

    p = Path(path)
    data = read_json(p, "fitted-workload")
    check_fitted(data, str(p))
    return dict(data)


def check_fitted(data: Any, where: str) -> None:
    """A fitted-workload payload as :func:`load_fitted` accepts it; else one line naming
    the first defect (``workload fit`` checks what it writes by this, too)."""
    from calibration.inputs import validate

    if not isinstance(data, dict):
        raise ComemInputError(
            f"{where}: a fitted-workload file is a JSON object, got {type(data).__name__}"
        )
    variables = data.get("variables")
    if not isinstance(variables, dict):
        raise ComemInputError(f"{where}: 'variables' must map names to fitted distributions")
    missing = [v for v in FITTED_VARIABLES if v not in variables]
    if missing:
        raise ComemInputError(f"{where}: lacks fitted variable(s) {', '.join(missing)}")
    validate(FittedFile, data, where)


def _draw(spec: dict[str, Any], rng: np.random.Generator, size: int) -> np.ndarray:
    if spec.get("dist") == "lognormal-mixture":
        first = rng.random(size) < spec["weights"][0]
        mu = np.where(first, spec["mus"][0], spec["mus"][1])
        sigma = np.where(first, spec["sigmas"][0], spec["sigmas"][1])
        x = rng.lognormal(mu, sigma)
    else:
        x = rng.lognormal(spec["mu"], spec["sigma"], size)
    u = rng.random(size)
    x = np.where(u < spec["zero_fraction"], 0.0, x)
    if spec.get("one_fraction") is not None:
        x = np.where(rng.random(size) < spec["one_fraction"], 1.0, np.minimum(x, 1.0))
    return x


def fitted_file(name: str | None) -> Path:
    """A fitted-workload file: a path, or the name of a committed fit in ``sim/data``
    (``swebench_fitted``, ``swebench_fitted_glm46``)."""
    if name is None:
        return FITTED_FILE
    committed = DATA_DIR / f"{name.removesuffix('.json')}.json"
    if "/" not in name and committed.is_file():
        return committed
    return Path(name)


class FittedWorkload(AgentLoad):
    """Tasks sampled from distributions fitted to the SWE-bench traces (committed).

    ``path``: a fit file, or a committed fit's name: ``swebench_fitted`` (the default,
    Gemini-3-Pro mini-swe-agent on Verified) or ``swebench_fitted_glm46`` (decode lengths,
    steps and observations of GLM-4.6 under OpenHands, the trace closest to the CoMem
    authors' GLM agent; see docs/explanation/agents.md). ``keep_reasoning`` as for ``trace``.
    """

    kind: Literal["fitted"] = "fitted"
    #: the fitted-distribution JSON, or the name of a committed one (default:
    #: sim/data/swebench_fitted.json)
    path: PathText | None = None
    #: drawn step counts are capped at this
    max_steps: PositiveInt = 40
    keep_reasoning: bool = False

    def tasks(self, rng: np.random.Generator) -> list[list[Task]]:
        fit = load_fitted(str(fitted_file(self.path)))["variables"]
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
                        kept=None if self.keep_reasoning else int(round(comp[i] * frac[i])),
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
    data = trace_values(frame, payload["sources"], payload.get("variable_sources"))
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
        if pos.size == 0:  # e.g. kept_fraction of a source that keeps every token
            ax.set_title(f"{name}: no values (all at 1)", fontsize=9)
            ax.axis("off")
            continue
        logs = np.log10(pos)  # densities in log10 space: what a log-normal fit is about
        ax.hist(logs, bins=50, density=True, alpha=0.5, label="trace (x > 0)")
        grid = np.linspace(logs.min(), logs.max(), 300)
        ln10 = np.log(10.0)
        if spec.get("dist") == "lognormal-mixture":
            parts = zip(spec["weights"], spec["mus"], spec["sigmas"], strict=True)
            pdf = sum(w * stats.norm.pdf(grid, m / ln10, sd / ln10) for w, m, sd in parts)
            label = "fitted 2-component log-normal"
        else:
            pdf = stats.norm.pdf(grid, spec["mu"] / ln10, spec["sigma"] / ln10)
            label = "fitted log-normal"
        ax.plot(grid, pdf, "k-", lw=1.2, label=label)
        ax.set_xlabel(f"log10 {units[name]}")
        ax.set_ylabel("density of log10 x")
        title = f"{name}: KS {spec['ks']:.3f}, zeros {spec['zero_fraction']:.1%}"
        if spec.get("one_fraction") is not None:
            title += f", ones {spec['one_fraction']:.1%}"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    title = f"Fitted workload vs SWE-bench traces ({', '.join(payload['sources'])}"
    for name, chosen in payload.get("variable_sources", {}).items():
        title += f"; {name} from {', '.join(chosen)}"
    fig.suptitle(title + ")", fontsize=10)
    fig.tight_layout()
    from calibration.outputs import write_atomic

    path = Path(out)
    try:  # whole: a killed write leaves the old figure, never half of the new one
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100), "--figure")
    finally:
        plt.close(fig)
    return path
