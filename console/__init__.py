"""Provides the Textual console and the clusterctl command line."""
