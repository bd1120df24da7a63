"""comem-sim command-line interface and top-level API."""
