"""The one vLLM V1 scheduler (engine/scheduler.py, engine/stepping.py) on hand-worked schedules.

Every expected value below is worked out by hand from VLLM_FACTS.md section 1 (the
running loop, then admission; preemption of the newest running request; the victim at
the front of WAITING; no admission in an iteration that preempted) with block size 4
so the arithmetic stays small. Each case runs the reference (`schedule` / `apply`,
iteration by iteration) and event stepping (`next`, with runs and the decode group),
which must agree exactly.
"""

from __future__ import annotations

import pytest

from calibration.errors import ComemInputError
from engine.kv_cache import KVCache, StreamSpace
from engine.request import Run, Sequence, Step
from engine.scheduler import Scheduler, SchedulerConfig
from engine.stepping import EventStepper


def make(blocks: int, budget: int, lazy: bool = False, **cfg) -> Scheduler:
    kv = KVCache(blocks, block_size=4)
    config = SchedulerConfig(max_num_batched_tokens=budget, **cfg)
    return EventStepper(kv, config) if lazy else Scheduler(kv, config)


def trace(sched: Scheduler, limit: int = 10_000) -> list[tuple]:
    """Run to completion; one row per iteration: (iteration, scheduled tokens by request
    id, decodes, decode KV total, prefill chunks, admitted ids, preempted ids, events)."""
    rows: list[tuple] = []
    while not sched.idle and len(rows) < limit:
        plan = sched.next()
        if isinstance(plan, Run):
            for j in range(plan.iterations):
                rows.append(
                    (
                        sched.iterations + j,
                        None,
                        plan.num_decode,
                        plan.decode_kv_total0 + plan.num_decode * j,
                        [(plan.chunk, plan.prefill_cached0 + plan.chunk * j)] if plan.chunk else [],
                        [],
                        [],
                        [],
                    )
                )
            events = sched.apply_run(plan, plan.iterations)
            rows[-1] = (*rows[-1][:7], [(s.id, w) for s, w in events])
        else:
            assert isinstance(plan, Step)
            it = sched.iterations
            tokens = {s.id: n for s, n in plan.entries}
            events = sched.apply(plan)
            rows.append(
                (
                    it,
                    tokens,
                    plan.num_decode,
                    plan.decode_kv_total,
                    list(zip(plan.prefill_new, plan.prefill_cached, strict=True)),
                    [s.id for s in plan.admitted + plan.readmitted],
                    [s.id for s in plan.preempted],
                    [(s.id, w) for s, w in events],
                )
            )
        sched.check_invariants()
    return rows


def shape(rows: list[tuple]) -> list[tuple]:
    """What both steppings must agree on: per iteration, the priced shape and events."""
    return [(r[0], r[2], r[3], r[4], r[7]) for r in rows]


def test_chunked_prefill_under_the_token_budget():
    sched = make(100, budget=10)
    a, b = Sequence(0, 25, 3), Sequence(1, 6, 2)
    sched.add(a)
    sched.add(b)
    rows = trace(sched)
    tokens = [r[1] for r in rows]
    # a's prompt in chunks of 10, 10, 5; b gets the rest of the budget in iteration 2
    assert tokens == [{0: 10}, {0: 10}, {0: 5, 1: 5}, {0: 1, 1: 1}, {0: 1, 1: 1}]
    assert rows[2][4] == [(5, 20), (5, 0)]  # two chunks: 5 over a's 20, 5 over nothing
    assert rows[2][7] == [(0, "first_token")]
    # iteration 3: a decodes over 26 tokens; b's last prompt token (1 new over 5
    # computed) has a decode's shape and is priced as one
    assert rows[3][2:4] == (2, 26 + 6)
    assert rows[3][7] == [(1, "first_token")]
    assert rows[4][7] == [(0, "finished"), (1, "finished")]
    assert a.generated == 3 and b.generated == 2


def test_max_num_seqs_holds_admission_back():
    sched = make(100, budget=100, max_num_seqs=1)
    seqs = [Sequence(i, 8, 2) for i in range(3)]
    for s in seqs:
        sched.add(s)
    rows = trace(sched)
    admitted = [r[5] for r in rows if r[5]]
    assert admitted == [[0], [1], [2]]
    assert len(rows) == 6  # each: prompt + 1 decode, one at a time


def test_preemption_takes_the_newest_and_readmits_it_first():
    # 6 blocks of 4 tokens; three 4-token prompts each generating 12 tokens
    sched = make(6, budget=100, reserve_full_prompt=False)
    seqs = [Sequence(i, 4, 12) for i in range(3)]
    for s in seqs:
        sched.add(s)
    rows = trace(sched)
    # iteration 0: all three admitted (1 block each); iteration 1: position 4 -> a second
    # block each (6 used); iterations 2-4: positions 5-7 fit; iteration 5: position 8
    # needs a third block: a has none free -> the newest (2) is preempted, its 2 blocks
    # let a and then b allocate
    assert rows[0][5] == [0, 1, 2]
    assert [r[6] for r in rows[:5]] == [[], [], [], [], []]
    assert rows[5][6] == [2]
    assert rows[5][1] == {0: 1, 1: 1}  # 2 did not run, and nothing was admitted
    assert seqs[2].preemptions == 1
    # iteration 9: position 12 needs a fourth block for a; none free -> the newest
    # running request, now 1, is preempted and goes to the front: waiting = [1, 2]
    assert rows[9][6] == [1] and rows[9][1] == {0: 1}
    # iteration 10: 1 would recompute 4 + 9 tokens (4 blocks), 2 blocks are free
    assert rows[10][5] == []
    done = [r[0] for r in rows if any(w == "finished" for _, w in r[7])]
    assert done[0] == 11  # a: 12 tokens
    # iteration 12: 1 is readmitted first, all 13 tokens in one chunk; 2 (4 + 5 tokens,
    # 3 blocks) does not fit beside it and waits until 1 finishes (iteration 14)
    readmits = [(r[0], r[5], r[4]) for r in rows if r[5]][1:]
    assert readmits == [(12, [1], [(13, 0)]), (15, [2], [(9, 0)])]
    assert [s.preemptions for s in seqs] == [0, 1, 1]
    assert all(s.generated == 12 and s.status == "finished" for s in seqs)


def test_the_victim_can_be_the_requester_itself():
    # 2 blocks; two requests of 4-token prompts: the second's growth preempts itself
    sched = make(3, budget=100, reserve_full_prompt=False)
    a, b = Sequence(0, 4, 6), Sequence(1, 4, 6)
    sched.add(a)
    sched.add(b)
    rows = trace(sched)
    # iteration 1: a takes block 2 (3 used), b needs one too: none free, the newest
    # running request is b itself -> b is preempted, the loop ends
    assert rows[1][1] == {0: 1}
    assert rows[1][6] == [1]
    assert b.preemptions >= 1 and b.status == "finished" and a.status == "finished"


def test_full_prompt_reservation_is_vllm_019s_admission_check():
    # 4 blocks, 3 free after request 0: a 16-token prompt needs 4 in all, but only 1
    # for the 4-token first chunk the budget leaves it
    for reserve, admitted_in_first in ((True, [0]), (False, [0, 1])):
        sched = make(4, budget=8, reserve_full_prompt=reserve)
        sched.add(Sequence(0, 4, 2))  # 1 block
        sched.add(Sequence(1, 16, 2))  # 4 blocks in all, 1 for its first 4-token chunk
        step = sched.schedule()
        assert [s.id for s in step.admitted] == admitted_in_first


def test_head_of_line_blocking():
    sched = make(4, budget=100)
    sched.add(Sequence(0, 8, 2))  # 2 blocks (+1 for its first decode)
    sched.add(Sequence(1, 12, 2))  # 3 blocks: does not fit next to 0
    sched.add(Sequence(2, 1, 2))  # would fit, but stands behind 1
    step = sched.schedule()
    assert [s.id for s in step.admitted] == [0]


@pytest.mark.parametrize("case", ["chunks", "preempt", "self", "hol", "cache"])
def test_event_stepping_equals_the_reference(case):
    def build(lazy: bool) -> Scheduler:
        streams = StreamSpace()
        if case == "chunks":
            s = make(100, 10, lazy)
            for i, (p, o) in enumerate([(25, 3), (6, 2), (40, 30), (3, 50)]):
                s.add(Sequence(i, p, o))
        elif case == "preempt":
            s = make(6, 100, lazy, reserve_full_prompt=False)
            for i in range(3):
                s.add(Sequence(i, 4, 12))
        elif case == "self":
            s = make(3, 100, lazy, reserve_full_prompt=False)
            s.add(Sequence(0, 4, 6))
            s.add(Sequence(1, 4, 6))
        elif case == "hol":
            s = make(12, 6, lazy)
            for i, (p, o) in enumerate([(8, 20), (12, 9), (1, 30), (20, 4), (5, 5)]):
                s.add(Sequence(i, p, o))
        else:  # a shared prefix, cached blocks evicted under pressure
            s = make(20, 8, lazy)
            root = streams.new()
            s.kv.prime(root, 24)
            for i in range(5):
                s.add(Sequence(i, 30 + i, 9, streams.new(root, 24)))
        return s

    ref = shape(trace(build(False)))
    assert shape(trace(build(True))) == ref
    assert ref  # something ran


def test_bad_limits_are_one_clear_error():
    with pytest.raises(ComemInputError, match="max_num_batched_tokens"):
        SchedulerConfig(max_num_batched_tokens=0)
    with pytest.raises(ComemInputError, match="max_num_seqs"):
        SchedulerConfig(max_num_seqs=-3)


def test_the_engine_package_has_no_time():
    """engine/ imports neither SimPy nor sim/, comem/ or calibration's latency model: the
    static predictor and the measured fit (calibration) import it, not the other way."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, engine.stepping, engine.offload; "
        "bad = {m for m in sys.modules if m.split('.')[0] in {'simpy', 'sim', 'comem', 'live'}"
        " or m in {'calibration.latency', 'calibration.static', 'calibration.measured'}}; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_an_idle_engine_waits_only_for_cpu_loads_not_yet_done() -> None:
    """A load already done waits for GPU blocks, not for the copy: an engine that can
    schedule nothing must not wait 0 s for it again (the simulated clock stopped)."""
    sched = make(blocks=8, budget=16)
    done, later = Sequence(0, 8, 1), Sequence(1, 8, 1)
    sched.now = 5.0
    sched._loads[done] = (5.0, 0, 1)
    assert sched.next_load_after_now() is None
    assert sched.next_load_ready() == 5.0  # what a run is cut at, unchanged
    sched._loads[later] = (7.5, 0, 1)
    assert sched.next_load_after_now() == 7.5
