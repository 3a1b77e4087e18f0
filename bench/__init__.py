"""Benchmarks: each measures a figure as a ratio, side by side in one run (make bench)."""
