"""Tollway: one front door for LLM providers and data stores."""

__version__ = "0.1.0"
