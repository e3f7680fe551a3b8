"""Kafka adapters (kafka-python): thin, lazily connecting, closed by context managers.

``admin`` (topics exist / are created), ``consumer`` (the worker's frame source, bounded
reads without a group), ``producer`` (the record sink), ``buffer`` (the camera side's
bounded drop-oldest buffer) and ``dead_letters`` (the dead-letter sink and reader).
Production runs Apache Kafka; the local stack's tansu is only started by ``devtools``.
"""
