"""``comem replay``: real agents driving real servers, measured as the simulator measures.

Every architecture of a scenario (FC, CP, SM, KSO, ...) runs its sampled tasks (the
same ones the simulator runs: same seed, same sampler) against live OpenAI-compatible
servers: the agent model at ``agent_endpoint``, the memory model at
``memory_endpoint``. Each agent is a thread executing the same context policy as the
simulated agent (:mod:`sim.policy`): the policy says what to send, when to summarize,
wait and swap; this module turns its token segments into real text (words that are
one token each for the tiny model's tokenizer: seeded words for the system prompt,
observations and instructions, the servers' own output for actions and summaries), so
the server's prefix cache sees what the simulator's prefix cache sees. Asynchronous
summaries run on background threads.

Per-step rows use :data:`sim.agents.STEP_COLUMNS` semantics where the client can
observe them: ``step_latency_s = finished - submit + tool_s + stall_s``, with the
summarization wait of CP/SM and the swap wait of KSO in ``stall_s``, and the authors'
per-step metrics (``llm_exec_time_s`` ... ``total_step_time_s``). ``queue_s`` and
``cached_tokens`` are inside the server, so they are not recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from live.openai_stream import Endpoint, StreamResult, stream_completion
from live.profiler import _RowWriter
from sim.agents import TASK_COLUMNS, TaskRow
from sim.policy import (
    AgentReply,
    Await,
    ContextPolicy,
    PolicyParams,
    Prompt,
    Segment,
    Send,
    StepEnd,
    Summarize,
    Task,
    Tool,
    Waited,
    make_policy,
    total_step_time,
    uses_memory,
)
from sim.scenario import ArchitectureConfig, Scenario


class ReplayStepRow(NamedTuple):
    """One live step, in :class:`sim.agents.StepRow` terms where a client can observe
    them (``queue_s`` and ``cached_tokens`` are inside the server)."""

    architecture: str
    agent: int
    task: int
    step: int
    status: str
    submit_s: float
    first_token_s: float
    finished_s: float
    prefill_s: float
    decode_s: float
    tool_s: float
    stall_s: float
    step_latency_s: float
    prompt_tokens: int
    action_tokens: int
    summary_launched: bool
    summary_swapped: bool
    llm_exec_time_s: float
    summary_exec_time_s: float
    prefill_exec_time_s: float
    env_exec_time_s: float
    total_step_time_s: float
    #: ``usage`` (the server's counts) or ``client`` (prompt as sent, streamed chunks)
    token_counts_from: str


REPLAY_STEP_COLUMNS = ReplayStepRow._fields

#: one row per summarization request (CP on the agent server, SM/KSO on the memory one)
REPLAY_SUMMARY_COLUMNS = (
    "architecture",
    "agent",
    "task",
    "step",
    "server",
    "status",
    "submit_s",
    "ttft_s",
    "e2e_s",
    "prompt_tokens",
    "output_tokens",
    "token_counts_from",
)


@dataclass(frozen=True)
class LiveTarget:
    """Where and how to send requests."""

    agent: Endpoint
    model: str
    memory: Endpoint | None = None
    memory_model: str | None = None
    timeout_s: float = 120.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    vocabulary_words: int = 4000
    word_prefix: str = "w"


class _Words:
    """Seeded random prompt words, one token each for the tiny model's tokenizer."""

    def __init__(self, target: LiveTarget, seed: int, stream: int = 0) -> None:
        self.target = target
        self.seed = seed
        self.stream = stream  # one per architecture: no prompt is cached by another's run

    def make(self, n: int, *key: int) -> list[str]:
        rng = np.random.default_rng([self.seed, self.stream, *key])
        ids = rng.integers(0, self.target.vocabulary_words, n)
        return [f"{self.target.word_prefix}{i}" for i in ids]


@dataclass
class _LiveJob:
    """A summary request on a live server, as the executor sees it."""

    done: threading.Event = field(default_factory=threading.Event)
    e2e_s: float = 0.0
    pre_warm_s: float = 0.0


class _Texts:
    """The words of a task's segments: seeded prompt words for the system prompt,
    observations and instructions; what the servers wrote for actions and summaries."""

    def __init__(self, words: _Words, key: tuple[int, int]) -> None:
        self.words = words
        self.key = key
        self.actions: dict[int, list[str]] = {}
        self.summaries: dict[int, list[str]] = {}

    def segment(self, seg: Segment) -> list[str]:
        if seg.kind == "system":
            return self.words.make(seg.tokens, *self.key, 0)
        if seg.kind == "observation":
            return self.words.make(seg.tokens, *self.key, seg.ref, 1)
        if seg.kind == "instruction":
            return self.words.make(seg.tokens, *self.key, seg.ref, 2)
        if seg.kind == "padding":
            return self.words.make(seg.tokens, *self.key, seg.ref, 3)
        own = self.actions if seg.kind == "action" else self.summaries
        return own[seg.ref][: seg.tokens]

    def render(self, prompt: Prompt) -> list[str]:
        out = [w for seg in prompt.segments for w in self.segment(seg)]
        return out[-prompt.keep_last :] if prompt.keep_last is not None else out


class LiveAgent:
    """One agent thread executing a context policy (:mod:`sim.policy`) against live
    servers: the same state machine the simulated agent executes."""

    def __init__(
        self,
        agent_id: int,
        name: str,
        params: PolicyParams,
        target: LiveTarget,
        words: _Words,
        t0: float,
        steps: list[ReplayStepRow],
        tasks: list[TaskRow],
        lock: threading.Lock,
        on_task: Callable[[], None] | None = None,
        summaries: list[tuple[Any, ...]] | None = None,
        memory_max_model_len: int | None = None,
    ) -> None:
        self.id = agent_id
        self.name = name
        self.params = params
        self.target = target
        self.words = words
        self.t0 = t0
        self.steps = steps
        self.tasks = tasks
        self.summaries: list[tuple[Any, ...]] = summaries if summaries is not None else []
        self.crashed: str | None = None
        self.memory_max_model_len = memory_max_model_len
        self.lock = lock
        self.on_task = on_task
        self._background: list[threading.Thread] = []

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def _request(
        self, memory: bool, prompt: list[str], max_tokens: int
    ) -> tuple[StreamResult, float]:
        t = self.target
        endpoint = t.memory if memory and t.memory is not None else t.agent
        model = (t.memory_model or t.model) if memory else t.model
        submit = self._now()
        res = stream_completion(
            endpoint, model, " ".join(prompt), max_tokens, t.timeout_s, t.extra_body
        )
        return res, submit

    def run(self, own: list[Task]) -> None:
        """Run the tasks; an unexpected exception is kept (``self.crashed``), not lost
        with the thread, so the caller can report it."""
        try:
            for task_id, task in enumerate(own):
                self.run_task(task_id, task)
                if self.on_task is not None:
                    self.on_task()
        except Exception as exc:
            self.crashed = f"agent {self.id}: {type(exc).__name__}: {exc}"
        finally:
            for th in self._background:
                th.join()

    def run_task(self, task_id: int, task: Task) -> str:
        policy = make_policy(self.params, task, self.memory_max_model_len)
        texts = _Texts(self.words, (self.id, task_id))
        guard = threading.Lock()  # the policy and texts, shared with summary threads
        jobs: dict[int, _LiveJob] = {}
        start = self._now()
        run = policy.run()
        reply: AgentReply | Waited | None = None
        res: StreamResult | None = None
        submit = tool = stall = total_stall = 0.0
        prompt_len = summaries = 0
        while True:
            with guard:
                try:
                    action = run.send(reply)
                except StopIteration as end:
                    status = str(end.value)
                    break
                prompt = texts.render(action.prompt) if isinstance(action, Send | Summarize) else []
            reply = None
            if isinstance(action, Send):
                prompt_len = len(prompt)
                res, submit = self._request(False, prompt, action.output_tokens)
                if res.ok:
                    words = res.text.split()
                    with guard:
                        texts.actions[action.step] = words
                    # a client sees the latency; queueing and KV are inside the server
                    reply = AgentReply(True, len(words), latency_s=res.e2e_s)
                else:
                    reply = AgentReply(
                        False, failure=f"{res.status}: {res.error}"[:200], latency_s=res.e2e_s
                    )
            elif isinstance(action, Tool):
                time.sleep(action.seconds)
                tool += action.seconds
            elif isinstance(action, Summarize):
                job = jobs[action.job] = _LiveJob()
                w0 = self._now()
                if action.blocking:
                    self._summarize(policy, texts, guard, action, prompt, job, task_id)
                    stall += self._now() - w0
                else:
                    th = threading.Thread(
                        target=self._summarize,
                        args=(policy, texts, guard, action, prompt, job, task_id),
                        daemon=True,
                    )
                    self._background.append(th)
                    th.start()
            elif isinstance(action, Await):
                w0 = self._now()
                jobs[action.job].done.wait()
                stall += self._now() - w0
                reply = Waited(self._now() - w0)
            elif isinstance(action, StepEnd):
                swapped = jobs.get(action.swapped) if action.swapped is not None else None
                if res is not None:  # a step that sent nothing has no row
                    self._record(
                        policy, task_id, action, res, submit, prompt_len, tool, stall, swapped
                    )
                summaries += swapped is not None
                total_stall += stall
                res, tool, stall = None, 0.0, 0.0
        end_s = self._now()
        row = TaskRow(
            self.name,
            self.id,
            task_id,
            start,
            end_s,
            end_s - start,
            len(policy.raw),
            status,
            summaries,
            total_stall + stall,
        )
        with self.lock:
            self.tasks.append(row)
        return status

    def _summarize(
        self,
        policy: ContextPolicy,
        texts: _Texts,
        guard: threading.Lock,
        act: Summarize,
        prompt: list[str],
        job: _LiveJob,
        task_id: int,
    ) -> None:
        """One summary request, then ``policy.summary_done``; the job's event is always
        set (the agent may be waiting on it), before any pre-warm is sent."""
        memory = act.model == "memory"
        warm, warm_prompt = None, []
        try:
            res: StreamResult | None = None
            error = ""
            try:
                res, submit = self._request(memory, prompt, act.output_tokens)
                self._record_summary(task_id, act.step, memory, res, submit, len(prompt))
                job.e2e_s = res.e2e_s
            except Exception as exc:  # the thread must not die silently
                error = f"{type(exc).__name__}: {exc}"
            ok = res is not None and res.ok
            words = res.text.split() if res is not None and ok else []
            if res is not None and not ok:
                error = f"{res.status}: {res.error}"
            with guard:
                texts.summaries[act.job] = words
                warm = policy.summary_done(act.job, ok, len(words), error[:200])
                warm_prompt = texts.render(warm.prompt) if warm is not None else []
        finally:
            job.done.set()
        if warm is not None:
            # prefill the next context now, as the simulator does once the summary is
            # ready (the swap does not wait for it). 2 tokens: transformers serve caches
            # a prompt's blocks only after a forward pass that follows them (see
            # live.profiler); the simulator's pre-warm is 1 token, which vLLM caches at
            # prefill
            res, _ = self._request(False, warm_prompt, 2)
            job.pre_warm_s = res.e2e_s

    def _record_summary(
        self, task_id: int, t: int, memory: bool, res: StreamResult, submit: float, prompt: int
    ) -> None:
        row = (
            self.name,
            self.id,
            task_id,
            t,
            "memory" if memory else "agent",
            res.status,
            submit,
            res.ttft_s,
            res.e2e_s,
            *res.counts(prompt),
            res.token_counts_from,
        )
        with self.lock:
            self.summaries.append(row)

    def _record(
        self,
        policy: ContextPolicy,
        task_id: int,
        end: StepEnd,
        res: StreamResult,
        submit: float,
        prompt_len: int,
        tool_s: float,
        stall: float,
        swapped: _LiveJob | None,
    ) -> None:
        summary = swapped.e2e_s if swapped is not None else 0.0
        pre = swapped.pre_warm_s if swapped is not None else 0.0
        row = ReplayStepRow(
            self.name,
            self.id,
            task_id,
            end.step,
            res.status,
            submit,
            submit + res.ttft_s,
            submit + res.e2e_s,
            res.ttft_s,
            res.e2e_s - res.ttft_s,
            tool_s,
            stall,
            res.e2e_s + tool_s + stall,
            *res.counts(prompt_len),
            end.launched,
            end.swapped is not None,
            res.e2e_s,
            summary,
            pre,
            tool_s,
            total_step_time(policy.step_accounting, res.e2e_s, summary, pre, tool_s),
            res.token_counts_from,
        )
        with self.lock:
            self.steps.append(row)


@dataclass
class ReplayResult:
    scenario: Scenario
    steps: pd.DataFrame
    tasks: pd.DataFrame
    wall_s: dict[str, float]
    summaries: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(REPLAY_SUMMARY_COLUMNS))
    )

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, g in self.steps.groupby("architecture", sort=False):
            t = self.tasks[self.tasks["architecture"] == name]
            ok = g[g["status"] == "ok"]
            out[str(name)] = {
                "steps": int(len(g)),
                "steps_failed": int(len(g) - len(ok)),
                "tasks": int(len(t)),
                "tasks_finished": int((t["status"] == "finished").sum()),
                "tasks_ended_early": int((t["status"] != "finished").sum()),
                "mean_step_latency_s": float(ok["step_latency_s"].mean()),
                "mean_llm_exec_time_s": float(ok["llm_exec_time_s"].mean()),
                "mean_total_step_time_s": float(ok["total_step_time_s"].mean()),
                "p50_step_latency_s": float(ok["step_latency_s"].median()),
                "mean_task_latency_s": float(t["latency_s"].mean()),
                "mean_stall_s": float(ok["stall_s"].mean()),
                "wall_s": self.wall_s.get(str(name), float("nan")),
            }
        return {"scenario": self.scenario.name, "architectures": out}

    def write(self, directory: str) -> list[str]:
        """Every table (sorted) and the scenario; each file replaced whole (a file
        streamed during the run is swapped for the sorted one, never left half)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for key, frame in (
            ("steps", self.steps),
            ("tasks", self.tasks),
            ("summaries", self.summaries),
        ):
            p = out / REPLAY_FILES[key][0]
            tmp = p.with_name(f".{p.name}.tmp")
            frame.to_csv(tmp, index=False)
            tmp.replace(p)
            paths.append(str(p))
        return [*paths, str(_write_config(self.scenario, out))]


def _write_config(scenario: Scenario, out: Path) -> Path:
    from calibration.inputs import write_text

    return write_text(out / "config.json", scenario.model_dump_json(indent=1) + "\n", "config")


class _StreamedRows(list[Any]):
    """Rows kept in memory and, with a writer, appended to its CSV (flushed and synced)
    the moment they are taken: a replay killed half-way keeps every measured row."""

    def __init__(self, writer: _RowWriter | None = None) -> None:
        super().__init__()
        self.writer = writer

    def append(self, row: Any) -> None:
        super().append(row)
        if self.writer is not None:
            self.writer.write(list(row))


#: the CSV files of a replay, by the rows they hold
REPLAY_FILES = {
    "steps": ("live_steps.csv", REPLAY_STEP_COLUMNS),
    "tasks": ("live_tasks.csv", TASK_COLUMNS),
    "summaries": ("live_summaries.csv", REPLAY_SUMMARY_COLUMNS),
}


def replay_architecture(
    scenario: Scenario,
    arch: ArchitectureConfig,
    tasks: list[list[Task]],
    target: LiveTarget,
    on_task: Callable[[], None] | None = None,
    writers: dict[str, _RowWriter] | None = None,
) -> tuple[list[ReplayStepRow], list[TaskRow], list[tuple[Any, ...]], float]:
    """Run every agent of one architecture as a thread; returns step rows, task rows,
    summary-request rows, wall time. Closed loop (each agent runs its tasks back to
    back) or closed batch (every task on its own thread, all started at once).
    ``writers`` (by :data:`REPLAY_FILES` key): rows also go to them as they are taken."""
    check_replayable(scenario, target)
    if scenario.workload.arrivals == "closed-batch":
        tasks = [[task] for own in tasks for task in own]
    sink = writers or {}
    steps: list[ReplayStepRow] = _StreamedRows(sink.get("steps"))
    done: list[TaskRow] = _StreamedRows(sink.get("tasks"))
    summaries: list[tuple[Any, ...]] = _StreamedRows(sink.get("summaries"))
    lock = threading.Lock()
    stream = next(i for i, a in enumerate(scenario.architectures) if a.name == arch.name)
    words = _Words(target, scenario.seed, stream)
    t0 = time.perf_counter()
    agents = [
        LiveAgent(
            a,
            arch.name,
            arch,
            target,
            words,
            t0,
            steps,
            done,
            lock,
            on_task,
            summaries,
            arch.memory.max_model_len if arch.memory is not None else None,
        )
        for a in range(len(tasks))
    ]
    threads = [
        threading.Thread(target=ag.run, args=(own,), daemon=True)
        for ag, own in zip(agents, tasks, strict=True)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    nan = float("nan")
    for ag in agents:  # a crash ends the agent's tasks: a task row says so
        if ag.crashed is not None:
            crash = f"crashed: {ag.crashed}"
            done.append(TaskRow(arch.name, ag.id, -1, nan, nan, nan, 0, crash, 0, nan))
    return steps, done, summaries, time.perf_counter() - t0


def check_replayable(scenario: Scenario, target: LiveTarget) -> None:
    """One clear error before anything is sent, for what a live replay cannot do."""
    from calibration.errors import ComemInputError

    if scenario.workload.arrivals == "poisson":
        raise ComemInputError(
            "comem replay: Poisson (open-loop) arrivals are not supported; use arrivals ="
            " 'closed-loop' or 'closed-batch'"
        )
    for arch in scenario.architectures:
        if uses_memory(arch.kind) and target.memory is None:
            raise ComemInputError(
                f"architecture '{arch.name}' ({arch.kind}) needs a memory server: --memory-endpoint"
            )


def warm_up(target: LiveTarget, requests: int = 2) -> None:
    """A few short requests to every server first: the first request a server sees
    pays one-off costs (the tiny model's first takes ~2 s against ~10 ms after), which
    the simulator does not model and a profile does not contain."""
    words = _Words(target, 12345)
    for endpoint, model in ((target.agent, target.model), (target.memory, target.memory_model)):
        if endpoint is None:
            continue
        for i in range(requests):
            stream_completion(
                endpoint,
                model or target.model,
                " ".join(words.make(16, i)),
                4,
                target.timeout_s,
                target.extra_body,
            )


def check_live_cost(scenario: Scenario) -> None:
    """Refuse a replay above the live budgets (:mod:`calibration.limits`): one thread
    per agent, one request per agent step (summaries come on top)."""
    from calibration import limits
    from sim.scenario import agent_steps, check_cost

    check_cost(scenario, scenario.name)
    w = scenario.workload
    threads = w.agents if w.arrival_rate_per_s is None else w.agents * w.tasks_per_agent
    limits.check(limits.LIVE_CONCURRENCY, threads, f"{scenario.name}: workload.agents")
    steps, fields = agent_steps(scenario)
    limits.check(limits.LIVE_REQUESTS, steps, f"{scenario.name}: {fields}")


def replay_scenario(
    scenario: Scenario, target: LiveTarget, progress: bool = False, out: str | None = None
) -> ReplayResult:
    """Replay every architecture of ``scenario`` (one after the other) on live servers.

    ``out``: a directory where ``config.json`` is written first and every row is
    appended to its CSV as it is measured (a run killed half-way keeps what it
    measured); :meth:`ReplayResult.write` then rewrites the files sorted."""
    check_live_cost(scenario)
    rng = np.random.default_rng(scenario.seed)
    tasks = scenario.workload.tasks(rng)
    check_replayable(scenario, target)
    writers: dict[str, _RowWriter] = {}
    if out is not None:
        _write_config(scenario, Path(out))
        for key, (name, columns) in REPLAY_FILES.items():
            writers[key] = _RowWriter(Path(out) / name, tuple(columns))
    warm_up(target)
    all_steps: list[tuple[Any, ...]] = []
    all_tasks: list[tuple[Any, ...]] = []
    all_summaries: list[tuple[Any, ...]] = []
    wall: dict[str, float] = {}
    bar = None
    job = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} tasks"),
            TimeElapsedColumn(),
            transient=True,
        )
        bar.start()
        job = bar.add_task(
            scenario.name, total=sum(len(o) for o in tasks) * len(scenario.architectures)
        )
    try:
        for arch in scenario.architectures:
            if bar is not None and job is not None:
                bar.update(job, description=f"replay {arch.name}")
            advance = (lambda: bar.advance(job)) if bar is not None and job is not None else None
            steps, done, summ, secs = replay_architecture(
                scenario, arch, tasks, target, advance, writers
            )
            all_steps += sorted(steps, key=lambda r: (r[1], r[2], r[3]))
            all_tasks += sorted(done, key=lambda r: (r[1], r[2]))
            all_summaries += sorted(summ, key=lambda r: (r[1], r[2], r[3]))
            wall[arch.name] = secs
    finally:
        if bar is not None:
            bar.stop()
        for w in writers.values():
            w.close()
    return ReplayResult(
        scenario,
        pd.DataFrame(all_steps, columns=list(REPLAY_STEP_COLUMNS)),
        pd.DataFrame(all_tasks, columns=list(TASK_COLUMNS)),
        wall,
        pd.DataFrame(all_summaries, columns=list(REPLAY_SUMMARY_COLUMNS)),
    )


def comparison_line(row: Mapping[Any, Any]) -> str:
    """One row of :func:`compare_with_simulation`, for a terminal."""
    line = (
        f"{row['architecture']:8s} simulated vs live: step mean {row['sim_mean_step_s']:.3f}"
        f" vs {row['live_mean_step_s']:.3f} s ({row['step_error']:+.1%}), task mean"
        f" {row['sim_mean_task_s']:.2f} vs {row['live_mean_task_s']:.2f} s"
        f" ({row['task_error']:+.1%}), TTFT {row['prefill_error']:+.0%},"
        f" decode {row['decode_error']:+.0%}, per-step MAPE {row['per_step_mape']:.1%}"
    )
    if row["summary_error"] == row["summary_error"]:  # not NaN: it summarized
        line += f", summary request {row['summary_error']:+.0%}"
    return line


def compare_with_simulation(live: ReplayResult, simulated: Any) -> pd.DataFrame:
    """Per architecture: measured vs simulated mean step latency, mean task latency and
    mean stall, with relative errors (simulated / measured - 1).

    ``simulated`` is a :class:`sim.scenario.ScenarioResult` of the same scenario."""
    rows = []
    sim_by_name = {r.config.name: r for r in simulated.results}
    for name, g in live.steps.groupby("architecture", sort=False):
        s = sim_by_name[str(name)]
        ok = g[g["status"] == "ok"]
        lt = live.tasks[live.tasks["architecture"] == name]
        pairs = ok.merge(
            s.steps[["agent", "task", "step", "step_latency_s"]],
            on=["agent", "task", "step"],
            suffixes=("_live", "_sim"),
        )
        per_step = (pairs["step_latency_s_sim"] / pairs["step_latency_s_live"] - 1.0).abs()
        row: dict[str, Any] = {
            "architecture": str(name),
            "live_mean_step_s": float(ok["step_latency_s"].mean()),
            "sim_mean_step_s": float(s.steps["step_latency_s"].mean()),
            "live_mean_task_s": float(lt["latency_s"].mean()),
            "sim_mean_task_s": float(s.tasks["latency_s"].mean()),
            "live_mean_prefill_s": float(ok["prefill_s"].mean()),
            "sim_mean_prefill_s": float((s.steps["queue_s"] + s.steps["prefill_s"]).mean()),
            "live_mean_decode_s": float(ok["decode_s"].mean()),
            "sim_mean_decode_s": float(s.steps["decode_s"].mean()),
            "live_mean_stall_s": float(ok["stall_s"].mean()),
            "sim_mean_stall_s": float(s.steps["stall_s"].mean()),
            "per_step_mape": float(per_step.mean()),
            "live_mean_summary_s": float("nan"),
            "sim_mean_summary_s": float("nan"),
        }
        ls = live.summaries[
            (live.summaries["architecture"] == name) & (live.summaries["status"] == "ok")
        ]
        if len(ls):
            row["live_mean_summary_s"] = float(ls["e2e_s"].mean())
            req = s.requests
            if s.config.memory is not None:  # SM, KSO: every memory request summarizes
                sreq = req[req["engine"].str.contains("/memory", regex=False)]
            else:  # CP: the agent engine's requests tagged as summaries
                sreq = req[req["tag"].map(lambda tg: isinstance(tg, tuple) and "summary" in tg)]
            row["sim_mean_summary_s"] = float(sreq["e2e_s"].mean())
        for what in ("step", "task", "prefill", "decode", "summary"):
            row[f"{what}_error"] = row[f"sim_mean_{what}_s"] / row[f"live_mean_{what}_s"] - 1.0
        rows.append(row)
    return pd.DataFrame(rows)


def simulate_live(
    scenario: Scenario,
    profile: str,
    max_num_batched_tokens: int | None = None,
    block_size: int | None = None,
    kv_capacity_tokens: int | None = None,
) -> Any:
    """Simulate ``scenario`` with every engine priced by the measured ``profile`` and
    shaped like the live servers (token budget, block size, KV capacity: the profile's
    values unless given). Returns a :class:`sim.scenario.ScenarioResult`."""
    from calibration.measured import MeasuredProfile
    from sim.scenario import run_scenario

    prof = MeasuredProfile.load(profile)
    update: dict[str, Any] = {
        "profile": str(profile),
        "max_num_batched_tokens": max_num_batched_tokens or prof.max_num_batched_tokens,
        "enable_prefix_caching": True,
    }
    if block_size or prof.block_size:
        update["block_size"] = block_size or prof.block_size
    if kv_capacity_tokens or prof.kv_capacity_tokens:
        update["kv_capacity_tokens"] = kv_capacity_tokens or prof.kv_capacity_tokens
    archs = [
        a.model_copy(
            update={
                "agent": a.agent.model_copy(update=update),
                "memory": a.memory.model_copy(update=update) if a.memory is not None else None,
            }
        )
        for a in scenario.architectures
    ]
    return run_scenario(scenario.model_copy(update={"architectures": archs}))
