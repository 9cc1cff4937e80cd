"""Provides the benchmarks; each prints figures and ratios against a peer run alongside."""
