"""Server strategies: one module per strategy, each a Flower Message-API ``Strategy``."""
