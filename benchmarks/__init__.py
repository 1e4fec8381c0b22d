"""Benchmarks that print obsharvest's speed against the seed notebook's loop, in one run."""
