"""``comem plan``: which deployment a user with G GPUs should run for N agents.

The question none of the peers answers: given an agent model, a memory model, G GPUs of
one type and N agents (a workload), which architecture (FC, CP, SM, CoMem k-step-off),
which split of the GPUs between agent and memory model (dedicated or co-located), which
TP / expert-parallel / data-parallel layout, which k, and CPU KV offload or not?

1. **Enumerate** every candidate that fits: weights in GPU memory (``fits_in_memory``),
   GPUs used <= G (and <= ``max_gpus``).
2. **Prune with theory** (``theory/``): each candidate's mean step latency from the exact
   lockstep closed form under its engines' linear surrogates (N / DP identical agents per
   replica; a trace or fitted workload as the synthetic one of its means), and the
   KV-capacity bound on agents (contexts that fit the cache at once). An estimate, not a
   bound: past the KV bound it prices no preemption and co-location's turn-taking is not
   in it (both are noted).
3. **Confirm with the simulator** the ``top`` candidates by estimate, plus the best of
   every architecture kind and full context's best in every weight dtype (the verdict's
   baseline), in parallel processes; results are kept in ``out/points/``
   so an interrupted plan resumes. With a p99 SLO none of them meets, further rounds of
   ``top`` candidates, the likeliest to meet it first (:func:`~comem.plan.run.next_round`).
4. **Rank** by the objective (mean or p99 step latency, or steps per second per GPU)
   among those meeting the SLO and, with ``max_resolve_loss_pp``, losing at most that
   many points of resolve rate against the full-context agent at the pessimistic end of
   the fitted effectiveness model's 95% interval (:mod:`sim.effectiveness`); write the
   table (both columns), the Pareto fronts (latency vs GPUs, latency vs resolve rate)
   and the chosen deployment as a ready scenario file.

Modules, one per step: :mod:`~comem.plan.space` (1), :mod:`~comem.plan.estimate` (2),
:mod:`~comem.plan.confirm` (3), :mod:`~comem.plan.rank` (4), with :mod:`~comem.plan.run`
the whole, :mod:`~comem.plan.scenario` a candidate's scenario, :mod:`~comem.plan.report`
and :mod:`~comem.plan.figure` what the user reads. This package uses both ``sim`` and
``theory``, which may not import each other, so it lives with the command line.
"""
