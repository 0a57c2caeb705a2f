"""Metrics, benchmarks and reports."""
