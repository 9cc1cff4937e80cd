"""Provides per-machine journals read and written the way journald and journalctl do."""
