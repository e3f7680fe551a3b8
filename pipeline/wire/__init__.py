"""Wire contracts: what crosses Kafka and Redis, and where it lands.

``messages`` (typed, versioned schemas), ``codec`` (frame payloads, the published heatmap
PNG), ``dead_letters`` (the dead-letter header schema) and ``layout`` (every Redis key and
channel, every model-store path). These modules import nothing from the rest of the
project but ``pipeline.errors``.
"""
