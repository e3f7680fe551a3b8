"""The shared streaming library: wire contracts and adapters; no process lives here.

``wire/`` (schemas, codec, dead-letter headers, key and path layout), ``kafka/`` and
``redis/`` (transport adapters), ``model_store`` (versioned artifacts per line),
``runtimes/`` (loaded models), ``settings`` (shared settings sections), ``observability``
(metrics and health endpoints), ``retry``, ``files`` and ``errors``. The map and the
import rules: docs/architecture.md.
"""
