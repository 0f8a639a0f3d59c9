"""Benchmarks: `make bench` (or `python -m bench [name...]`) prints the figures.

Each benchmark measures the suite against a reference in the same run (these
machines are shared and noisy: compare ratios, not absolute numbers) and
results are recorded by hand in docs/benchmarks.md.
"""
