"""Shared test helpers, for any test package (fake clocks and the like)."""
