"""The time-free serving engine: vLLM V1's scheduler over its paged, prefix-cached KV
cache and CPU offload tier, and the request and step records they exchange.

No SimPy and no notion of time: the simulated engine (:mod:`sim.engine`) prices and
waits for the iterations scheduled here, the static-batch predictor
(:mod:`calibration.static`) sums their kernel time and the measured-profile fit
(:mod:`calibration.measured`) their features. Modules: :mod:`engine.request` (records),
:mod:`engine.kv_cache` (block pool, free queue, prefix cache), :mod:`engine.offload` (CPU
tier and its store buffer), :mod:`engine.scheduler` (the V1 policy),
:mod:`engine.stepping` and :mod:`engine.runs` (event stepping over it).
"""
