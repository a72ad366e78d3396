"""The harness behind the performance figures in docs/benchmarks.md: run `python -m benchmarks`."""
