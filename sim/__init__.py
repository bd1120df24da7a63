"""Discrete-event simulator of agent serving on GPU engines."""
