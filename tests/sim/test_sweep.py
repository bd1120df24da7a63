"""Sweeps: identical tables across worker counts and schedulers, resume after a real
kill with no lost or duplicated point, seeds from the point key, bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sim.sweep import load_sweep, point_key, point_seed, run_sweep

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "scenarios" / "paper_latency_glm47.toml"


def _sweep_file(tmp: Path, agents=(2, 3, 4, 5), ks=(1, 2, 4), seeds=1) -> Path:
    f = tmp / "s.toml"
    f.write_text(
        f'base = "{BASE}"\nseeds = {seeds}\n[set]\n"workload.steps" = 6\n'
        f'[grid]\n"workload.agents" = {list(agents)}\n"architectures.1.k" = {list(ks)}\n'
    )
    return f


@pytest.mark.slow
def test_tables_do_not_depend_on_workers_or_scheduler(tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path, agents=(2, 3), ks=(2, 4), seeds=2))
    assert len(sweep.points) == 8
    one = run_sweep(sweep, tmp_path / "one", workers=1)
    two = run_sweep(sweep, tmp_path / "two", workers=2)
    pd.testing.assert_frame_equal(one, two)
    pytest.importorskip("distributed")
    dask = run_sweep(sweep, tmp_path / "dask", workers=2, scheduler="local")
    pd.testing.assert_frame_equal(one, dask)
    assert len(one) == 8 * 2  # FC and KSO per point
    assert one.groupby(["key", "architecture"]).size().max() == 1


def test_point_seeds_derive_from_the_sweep_seed_and_key(tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path, seeds=3))
    keys = [p.key for p in sweep.points]
    assert len(set(keys)) == len(keys)
    for p in sweep.points:
        assert p.scenario.seed == point_seed(0, point_key(p.scenario, p.replicate))
    again = load_sweep(_sweep_file(tmp_path, seeds=3))
    assert [p.key for p in again.points] == keys


@pytest.mark.slow
def test_killed_sweep_resumes_without_loss_or_duplicates(tmp_path):
    spec = _sweep_file(tmp_path)  # 12 points
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "comem", "sweep", str(spec), "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "points").glob("*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a real kill, mid-sweep
    proc.wait()
    partial = len(list((out / "points").glob("*.parquet")))
    assert 3 <= partial < 12, partial
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = pd.read_parquet(out / "results.parquet")
    fresh = run_sweep(load_sweep(spec), tmp_path / "fresh", workers=1)
    pd.testing.assert_frame_equal(resumed, fresh)
    assert len(resumed) == 24 and resumed.groupby(["key", "architecture"]).size().max() == 1


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal: Linux only")
@pytest.mark.slow
def test_a_killed_sweeps_workers_die_with_it(tmp_path):
    """kill -9 of the command (not its process group): its pool's workers must not go
    on simulating, nor wait forever on a pipe no one writes."""
    spec = _sweep_file(tmp_path, agents=(8, 16, 24, 32))
    cmd = [sys.executable, "-m", "comem", "sweep", str(spec), "--workers", "2",
           "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[str] = []
    deadline = time.time() + 60
    while time.time() < deadline and len(children) < 2 and proc.poll() is None:
        found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        children = found.stdout.split()
        time.sleep(0.05)
    assert len(children) == 2, "the sweep ended before its workers could be seen"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    alive = children
    while alive and time.time() < deadline:
        alive = [
            c
            for c in children
            if Path(f"/proc/{c}").exists()
            and "zombie" not in Path(f"/proc/{c}/status").read_text(errors="replace")
        ]
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived the killed sweep"


@pytest.mark.parametrize(
    "grid,needle",
    [
        ('"workload.agentz" = [1, 2]', "workload.agentz"),
        ('"workload.agents" = []', "empty"),
        ('"workload.agents" = {start = "a", stop = 4}', "numbers"),
        ('"workload.agents" = {start = 8, stop = 4}', "empty"),
        ('"workload.agents" = 7', "list or a range"),
        ('"workload.agents" = [2, "3"]', "mixes number and str"),
        ('"workload.agents" = [1, 2]\n[set]\n"workload.agents" = 3', "both [set] and [grid]"),
    ],
)
@pytest.mark.slow
def test_bad_sweep_files_are_one_line_exit_2(tmp_path, grid, needle):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'base = "{BASE}"\n[grid]\n{grid}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "comem", "sweep", str(bad), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def _table(speedups: dict[tuple[str, int, int], float]) -> pd.DataFrame:
    """A results table by hand: (architecture, its index, k on the axis) -> speedup."""
    rows = []
    for point, ((arch, index, k), value) in enumerate(speedups.items()):
        rows.append(
            {"point": point, "architecture": arch, "architecture_index": index,
             "kind": arch.lower(), "grid.architectures.1.k": k, "speedup_step": value,
             "resolve_rate_delta_pp": -1.0, "error": ""}
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_best_k_is_only_for_the_architecture_the_k_axis_sets():
    from sim.sweep import summary
    from sim.sweep_table import summary_markdown

    # KSO (index 1) is the axis's; CP (index 2) keeps its own k: its rows differ by noise
    table = _table({("KSO", 1, 4): 1.2, ("KSO", 1, 8): 1.5, ("CP", 2, 4): 2.01, ("CP", 2, 8): 2.0})
    result = summary(table)
    assert [(r["architecture"], r["grid.architectures.1.k"]) for r in result["best_k"]] == [
        ("KSO", 8)
    ]
    winner = result["winner"]
    assert winner["architecture"] == "CP" and winner["axes"] == []
    assert "winner: CP at , 2.01x" not in summary_markdown(result)  # no k to locate it by
    assert "architectures.1.k=" not in summary_markdown(result).split("winner:")[1]


def test_a_sweep_full_context_wins_everywhere_says_so():
    from sim.sweep import summary
    from sim.sweep_table import summary_markdown

    table = _table({("KSO", 1, 4): 0.8, ("KSO", 1, 8): 0.9})
    text = summary_markdown(summary(table))
    assert "winner: full context at every point (the fastest other: KSO" in text


def test_sweep_json_is_valid_json(tmp_path):
    """The summary's numbers come from pandas (numpy scalars): --json prints them."""
    import json

    f = _sweep_file(tmp_path, agents=(2,), ks=(1, 2))
    proc = subprocess.run(
        [sys.executable, "-m", "comem", "sweep", str(f), "--out", str(tmp_path / "o"), "--json"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "COMEM_SHARED": "/nonexistent"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["points"] == 2 and data["summary"]["winner"]["architecture"]


def test_seed_spread_is_shown_and_a_best_k_within_it_is_said():
    """Two seeds a point: the speedup is their mean with [lowest, highest]; a best k whose
    seeds overlap another k's says so, one that stands clear does not."""
    from sim.sweep import summary
    from sim.sweep_table import summary_markdown

    rows = []
    for k, values in {4: (1.0, 1.4), 8: (1.3, 1.36), 16: (0.5, 0.6)}.items():
        for rep, value in enumerate(values):
            rows.append(
                {"point": k, "replicate": rep, "architecture": "KSO", "architecture_index": 1,
                 "kind": "kso", "grid.architectures.1.k": k, "speedup_step": value,
                 "resolve_rate_delta_pp": -1.0, "error": ""}
            )  # fmt: skip
    result = summary(pd.DataFrame(rows))
    (best,) = result["best_k"]
    assert best["grid.architectures.1.k"] == 8 and best["seeds"] == 2
    assert best["ties"] == [4]  # k=4's seeds reach 1.4, above k=8's lowest 1.3
    text = summary_markdown(result)
    assert "1.33x [1.30, 1.36]" in text and "(seeds overlap k=4)" in text
    assert "k=16" not in text.split("best k per point")[1]


def test_a_sweep_whose_every_point_failed_summarizes_to_nothing():
    """Failed rows carry no architecture columns: the summary is empty, not a KeyError."""
    from sim.sweep import summary
    from sim.sweep_table import summary_markdown

    table = pd.DataFrame([{"point": 0, "replicate": 0, "error": "boom", "grid.workload.agents": 1}])
    result = summary(table)
    assert result["rows"] == [] and result["winner"] is None
    assert "winner" not in summary_markdown(result)


def test_a_sweep_never_replaces_a_users_results_file_and_marks_its_own(tmp_path):
    """A user's results.parquet in --out is refused before any point runs, in one line; a
    sweep's own table (marked, or one written before the marker: by its columns) is
    resumed into."""
    from cli_helpers import assert_user_error, run_comem

    from calibration.outputs import RESULT_MARKER

    spec = _sweep_file(tmp_path, agents=(1,), ks=(2,))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.parquet").write_text("my measurements")
    proc = run_comem("sweep", str(spec), "--workers", "1", "--out", str(mine))
    assert_user_error(proc, "results.parquet exists and is not part of a comem sweep result")
    assert (mine / "results.parquet").read_text() == "my measurements"
    out = tmp_path / "out"
    for _ in range(2):
        proc = run_comem("sweep", str(spec), "--workers", "1", "--out", str(out), "--json")
        assert proc.returncode == 0, proc.stderr
        assert '"results.parquet"' in (out / RESULT_MARKER).read_text()
        (out / RESULT_MARKER).unlink()  # as a sweep written before the marker left it
