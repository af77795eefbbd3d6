"""Scripts that print measured figures; run them from the repository root, e.g. ``python -m benchmarks.bench_models``."""
