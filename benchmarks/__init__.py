"""Benchmarks of the real pipeline against a plain read-and-append floor (see benchmarks/RESULTS.md)."""
