"""Keepers: self-hosted customer lifecycle management."""

__version__ = "0.1.0"
