"""rlhf: align transformer language models with human (and AI) feedback."""

__version__ = "0.4.0"
