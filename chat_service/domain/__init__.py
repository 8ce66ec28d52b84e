"""The chat domain: plain data and rules, no I/O, no frameworks."""
