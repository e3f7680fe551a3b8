"""Processes that wire the pure parts together: inference worker and trainer job."""
