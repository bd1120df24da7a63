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
# # Reproducing the paper's claims
#
# CoMem claims lower end-to-end latency than a full-context agent, growing with
# serving throughput. We run the authors' latency benchmark (GLM-4.7) at increasing
# concurrency and read what drives the gap from the recorded metrics.

# %%
import os

import pandas as pd

from sim.scenario import load_scenario, run_scenario

QUICK = os.environ.get("COMEM_QUICK", "1") == "1"
ROOT = "../" if os.path.basename(os.getcwd()) == "notebooks" else ""
agents = [4, 16] if QUICK else [16, 64, 128, 256]
steps = 16 if QUICK else 64

# %%
rows = []
for n in agents:
    scenario = load_scenario(
        f"{ROOT}scenarios/paper_latency_glm47.toml",
        [f"workload.agents={n}", f"workload.steps={steps}"],
    )
    summary = run_scenario(scenario).summary()
    for arch, s in summary["architectures"].items():
        rows.append(
            {
                "agents": n,
                "architecture": arch,
                "task_s": s["mean_task_latency_s"],
                "preemptions": s["preemptions"],
                "kv_peak": s["kv_peak_fraction"],
                "uncached_tokens_per_step": s["mean_uncached_prefill_tokens"],
                "speedup_vs_fc": summary["speedup_vs_fc"][arch],
            }
        )
table = pd.DataFrame(rows)
table
