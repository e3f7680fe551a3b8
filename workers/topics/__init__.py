"""Topics job: create the frames and dead-letter topics (clients never auto-create them).

``main`` (the job) and ``settings`` (partitions, replication, topic configs).
"""
