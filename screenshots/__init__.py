"""Provides the console's screenshots: the scenes and the command that renders them as SVG."""
