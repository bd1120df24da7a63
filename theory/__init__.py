"""Closed forms and bounds for agent context management (sympy, lambdified to numpy).

``latex_results()`` gives every symbolic result as LaTeX, for papers and notebooks.
"""

from __future__ import annotations

import sympy as sp


def latex_results() -> dict[str, str]:
    """Name -> LaTeX of each symbolic result."""
    from theory import bounds, frontier, network, single_agent

    return {
        "request latency (prefill of P - h new tokens, a - 1 decodes)": sp.latex(
            single_agent.REQUEST_LATENCY
        ),
        "Jensen lower bound on the mean stall": sp.latex(bounds.JENSEN_LOWER),
        "Scarf upper bound on the mean stall": sp.latex(bounds.SCARF_UPPER),
        "Cantelli bound on P(stall > 0), mu < 0": sp.latex(bounds.CANTELLI),
        "Little's law (closed system)": sp.latex(network.LITTLE),
        "optimistic throughput bound": sp.latex(network.THROUGHPUT_UPPER),
        "batch-aware throughput bound (engine busy time)": sp.latex(network.BATCH_THROUGHPUT_UPPER),
        "batch-aware pessimistic mean response time": sp.latex(network.MEAN_RESPONSE_UPPER),
        "batch-aware pessimistic throughput bound": sp.latex(network.THROUGHPUT_LOWER),
        "batch-aware worst-case response time (every request)": sp.latex(
            network.PESSIMISTIC_RESPONSE
        ),
        "resolve rate (fitted, k steps per summary, M raw steps kept)": sp.latex(
            frontier.RESOLVE_RATE
        ),
        "KSO at least as effective as CP iff q_mem / q_agent <=": sp.latex(frontier.QUALITY_BOUND),
        "former effectiveness proxy (summary tokens s, raw steps r)": sp.latex(
            frontier.EFFECTIVENESS_PROXY
        ),
    }
