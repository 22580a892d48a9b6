"""The `link` fixture of the interop tests (interop_lab.py has the lab)."""

from interop_lab import link

__all__ = ["link"]
