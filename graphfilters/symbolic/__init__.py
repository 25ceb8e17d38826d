"""Symbolic layer (work in progress)."""
