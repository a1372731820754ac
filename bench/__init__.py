"""Benchmarks (`make bench` writes bench/RESULTS.md). Each runs alone: `python -m bench.NAME`.
Figures are ratios against a baseline measured in the same run, medians of several repeats."""
