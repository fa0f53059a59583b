"""Benchmarks: `python -m bench` runs every scenario side by side; see bench/README.md."""
