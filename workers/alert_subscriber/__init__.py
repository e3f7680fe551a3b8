"""Alert subscriber: prints or forwards one product line's alerts.

``main`` (the process), ``settings``, ``subscriber`` (the consumer-group member).
"""
