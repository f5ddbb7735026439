"""Side-by-side measurements of `pipe` against peer tools; run ``python benchmarks/run.py``."""
