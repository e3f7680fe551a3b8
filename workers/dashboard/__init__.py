"""Operator's dashboard: a read-only page over what the workers and drift monitor store.

``main`` (the process), ``settings``, ``server`` (routes, JSON, images) and ``static/``
(the page and its script).
"""
