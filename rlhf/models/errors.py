"""Errors of model loading that the CLI prints as one line (no torch import here, so the GGUF
converter and the loaders can share them without importing each other)."""

from __future__ import annotations

__all__ = ["HubError"]


class HubError(ValueError):
    """A hub id that cannot be loaded here: not cached, and the Hub is offline or unreachable.
    Its message is one line meant for the user (the CLI prints it without a traceback)."""
