"""Benchmarks: commands that measure the warehouse, not tests."""
