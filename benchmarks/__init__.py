"""Benchmarks against the peers and the limits: `make bench` runs benchmarks.run (docs/PERFORMANCE.md)."""
