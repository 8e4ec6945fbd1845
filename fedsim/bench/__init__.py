"""``fedsim bench``: per-round wall time of fedsim's strategies against reference implementations."""
