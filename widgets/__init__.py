"""Provides the console's reusable widgets, one per module."""
