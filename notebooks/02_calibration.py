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
# # Calibration: what a GPU iteration costs
#
# The embedded profiles are fitted to vLLM 0.19.0 kernel timings (NVIDIA aiconfigurator)
# and an overhead term fitted to 2024 vLLM end-to-end runs. This notebook reads them and
# composes iteration times; with `shared/` beside the project it also recomputes errors.

# %%
from calibration import Batch, LatencyModel
from calibration.report import build_report, render_text

# %%
report = build_report("h100_sxm", "bf16", figures_dir=None)
print(render_text(report))

# %% [markdown]
# Where the time of one GLM-4.7 iteration goes (fp8, TP4, H200): 64 decodes at 4k
# context plus a 2k-token prefill chunk over a 30k-token cached prefix.

# %%
lm = LatencyModel("glm-4.7", "h200_sxm", 4, "fp8")
batch = Batch(decode_kv=[4096] * 64, prefill_new=[2048], prefill_cached=[30000])
for part, seconds in lm.breakdown(batch).items():
    print(f"{part:24s} {seconds * 1e3:8.3f} ms")
print(f"{'total':24s} {lm.iteration_time(batch) * 1e3:8.3f} ms")
