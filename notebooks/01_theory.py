# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The theory of decoupled context memory
#
# Closed forms from `theory/`: the exact latency of one request under the linear
# surrogate, the stall bounds, and what they imply for KSO's lag. Set `QUICK = False`
# for the full-size numbers.

# %%
import os

import numpy as np
import sympy as sp

from theory import latex_results
from theory.bounds import masking_lag, scarf_upper, jensen_lower
from theory.single_agent import REQUEST_LATENCY, AgentParams, step_latencies

QUICK = os.environ.get("COMEM_QUICK", "1") == "1"

# %% [markdown]
# One request: a prefill of `P - h` new tokens over `h` cached ones, then `a - 1` decodes.

# %%
REQUEST_LATENCY

# %%
for name, tex in latex_results().items():
    print(f"{name}: ${tex}$")

# %% [markdown]
# KSO against FC for one agent, by k (DeepSWE-like coefficients, 1 s tool time).

# %%
coeffs = np.array([5e-3, 2e-5, 1e-9, 5e-5, 3e-8])
ks = np.arange(1, 9)
p = AgentParams(
    system=np.full(ks.size, 512), observation=np.full(ks.size, 512),
    action=np.full(ks.size, 1024), summary=np.full(ks.size, 2048),
    tool_s=np.full(ks.size, 1.0), steps=16 if QUICK else 64, k=ks,
    retain=np.full(ks.size, 4), lag=np.full(ks.size, 1),
)
fc = step_latencies("fc", p, coeffs)[0].sum(0)
kso = step_latencies("kso", p, coeffs, coeffs)[0].sum(0)
print("speedup of KSO over FC by k:", np.round(fc / kso, 3))

# %% [markdown]
# Stall bounds: a 2.5 s summary against 1 s steps with variance 0.25 s^2.

# %%
print("Jensen lower bound, lag 2:", float(jensen_lower(2.5, 2.0)))
print("Scarf upper bound, lag 2:", float(scarf_upper(0.5, 0.5 + 0.25)))
print("lag that masks it in expectation:", masking_lag(1.0, 2.5))
print("lag that masks it with p >= 0.95:", masking_lag(1.0, 2.5, 0.25, 0.25, eps=0.05))
