"""The inference worker: Kafka frames -> micro-batches -> model -> Redis, then commit.

``main`` (the process: settings, wiring, run), ``settings``, ``worker`` (the batch loop
and the small protocols it depends on), ``batching`` (micro-batch forming), ``metrics``.
"""
