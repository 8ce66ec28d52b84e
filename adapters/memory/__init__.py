"""In-process coordination for the single-process embedded default."""
