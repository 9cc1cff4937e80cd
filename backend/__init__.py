"""Provides clustertui's node-side and client-side machinery; it never imports Textual."""
