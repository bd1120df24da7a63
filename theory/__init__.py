"""Closed-form latency models and bounds (sympy, lambdified to numpy)."""
