"""Real servers: an OpenAI-compatible streaming client, a load profiler, a multi-agent
replay client, and a tiny local model served by ``transformers serve`` for tests.

Everything here talks to live processes over HTTP; nothing is simulated. The
simulator (``sim``) and the fitted profiles (``calibration``) are what it is compared
against. torch/transformers are needed only to *create and serve* the tiny model (the
``serve`` extra); the clients use the standard library alone.
"""
