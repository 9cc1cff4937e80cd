"""Provides the benchmarks; each prints figures beside the peer measured in the same run."""
