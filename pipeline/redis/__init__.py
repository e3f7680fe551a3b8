"""Redis adapters (redis-py): the one client factory and what is read and written.

``client`` (the factory every process uses, permanent errors), ``results`` (the worker's
idempotent result sink, and the reader of what it stored), ``streams`` (consumer-group
reads of the result and alert streams) and ``model_events`` (promotions over pub/sub).
Keys and channels come from :mod:`pipeline.wire.layout`.
"""
