"""Drift monitor: per-line score drift against the serving model's calibration scores.

``main`` (the process), ``settings``, ``monitor`` (follows the results streams, publishes
drift events and metrics) and ``statistics`` (pure numpy: KS, PSI, the hysteresis).
"""
