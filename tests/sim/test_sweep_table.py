"""The sweep's printed tables: each row says what it compares."""

from __future__ import annotations

import pandas as pd

from sim.sweep import summary
from sim.sweep_table import summary_markdown


def test_a_point_whose_tasks_ended_early_is_marked():
    """k = steps makes no summary: KSO's contexts pass max_model_len and its tasks end
    early. Its speedup is over the steps both ran; the table marks it, as `comem run`'s
    does, so a -50 pp row does not read as a summary's cost."""

    rows = [
        {"point": k, "replicate": 0, "architecture": "KSO", "architecture_index": 1,
         "kind": "kso", "grid.architectures.1.k": k, "speedup_step": speedup,
         "resolve_rate_delta_pp": pp, "tasks_ended_early": early, "error": ""}
        for k, speedup, pp, early in ((4, 1.5, -1.6, 0), (64, 0.5, -50.0, 8))
    ]  # fmt: skip
    text = summary_markdown(summary(pd.DataFrame(rows)))
    assert "| 64 | KSO! | 0.50x | -50.0 |" in text and "| 4 | KSO | 1.50x |" in text
    assert "! = some of its tasks ended early" in text


def test_a_point_whose_full_context_tasks_ended_early_is_marked():
    """FC's contexts pass its max_model_len (KSO's do not): the speedup is over the steps
    both ran and KSO's resolve pp is against a baseline that solved little; the row says
    so, though KSO's own tasks all finished."""
    rows = [
        {"point": p, "replicate": 0, "architecture": name, "architecture_index": i,
         "kind": kind, "grid.architectures.0.agent.max_model_len": mml,
         "speedup_step": 1.0 if kind == "fc" else 0.96, "resolve_rate_delta_pp": pp,
         "tasks_ended_early": early, "error": ""}
        for p, mml, fc_early in ((0, 2000, 2), (1, 32768, 0))
        for i, name, kind, pp, early in ((0, "FC", "fc", 0.0, fc_early),
                                         (1, "KSO", "kso", 46.8 if fc_early else -3.2, 0))
    ]  # fmt: skip
    text = summary_markdown(summary(pd.DataFrame(rows)))
    assert "| 2000 | KSO (FC!) | 0.96x | +46.8 |" in text
    assert "| 32768 | KSO | 0.96x | -3.2 |" in text
    assert "(FC!) = some of full context's did" in text


def test_an_extrapolated_resolve_rate_is_marked_and_a_k_only_grid_has_even_columns():
    """k = 2 is below the effectiveness fit's range: its resolve pp carries `^`, as in
    `comem theory`. With k the only axis, the best-k table has as many cells per row as
    its separator (it had an empty first cell, one more than the separator)."""
    rows = [
        {"point": i, "replicate": 0, "architecture": "KSO", "architecture_index": 1,
         "kind": "kso", "grid.architectures.1.k": k, "speedup_step": speedup,
         "resolve_rate_delta_pp": pp, "resolve_rate_extrapolated": k < 3,
         "tasks_ended_early": 0, "error": ""}
        for i, (k, speedup, pp) in enumerate(((2, 1.1, -3.8), (4, 1.2, -1.9)))
    ]  # fmt: skip
    text = summary_markdown(summary(pd.DataFrame(rows)))
    assert "| 2 | KSO | 1.10x | -3.8^ |" in text and "| 4 | KSO | 1.20x | -1.9 |" in text
    best = text.split("best k per point")[1]
    table = [line for line in best.splitlines() if line.startswith("|")]
    assert table[0] == "| architecture | best k | speedup | resolve pp |"
    assert {line.count("|") for line in table} == {5}
    assert "| KSO | 4* | 1.20x | -1.9 |" in table  # 4 is the grid's edge
