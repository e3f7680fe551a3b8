"""The inference worker's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.observability import LATENCY_BUCKETS, new_registry


class WorkerMetrics:
    """The worker's metrics, registered in its own registry (served on ``/metrics``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        r = self.registry
        self.frames_in = Counter("linewatch_worker_frames_in_total", "Records consumed.",
                                 registry=r)
        self.frames_out = Counter("linewatch_worker_frames_out_total",
                                  "Results stored in Redis.", ["line"], registry=r)
        self.anomalies = Counter("linewatch_worker_anomalies_total",
                                 "Frames judged anomalous.", ["line"], registry=r)
        self.replays = Counter("linewatch_worker_replayed_total",
                               "Results that overwrote an earlier result of the same frame.",
                               registry=r)
        self.dead_letters = Counter("linewatch_worker_dead_letters_total",
                                    "Records sent to the dead-letter topic.", ["reason"],
                                    registry=r)
        self.dead_letters_dropped = Counter(
            "linewatch_worker_dead_letters_dropped_total", "Dead letters the dead-letter topic "
            "refused even without their payload (the original stays in the frames topic).",
            ["reason"], registry=r)
        self.batch_size = Histogram("linewatch_worker_batch_size", "Frames per model call.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.latency = Histogram("linewatch_worker_latency_seconds",
                                 "Capture timestamp to Redis write.", buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.inference = Histogram("linewatch_worker_inference_seconds", "Model call duration.",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.models_loaded = Gauge("linewatch_worker_model_loaded",
                                   "1 for each loaded (line, version).", ["line", "version"],
                                   registry=r)
        self.redis_up = Gauge("linewatch_worker_redis_up",
                              "1 when Redis answered the last write or ping.", registry=r)
        self.paused = Gauge("linewatch_worker_paused",
                            "1 while consumption is paused (Redis down).", registry=r)
        self.commits = Counter("linewatch_worker_commits_total", "Offset commits.", registry=r)
        self.consumer_lag = Gauge("linewatch_worker_consumer_lag",
                                  "Records behind the partition end (high watermark minus "
                                  "fetch position).", ["topic", "partition"], registry=r)
