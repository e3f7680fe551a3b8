import pytest
from pydantic import ValidationError

from pipeline.errors import ModelNotFoundError
from pipeline.model_store import ModelStore, publish_model, set_current
from pipeline.observability import HealthServer, new_registry
from pipeline.wire.layout import artifact_path
from tests.twins import BrightSpotDetector
from workers.inference.settings import WorkerSettings
from workers.producer.settings import ProducerSettings


def _save(detector, path):
    path.write_text(detector.metadata.version)


def _loader(path, device, line):
    return BrightSpotDetector(line, path.read_text())


def test_store_layout_current_pointer_and_lru(tmp_path):
    loads = []
    for line in ("a", "b", "c"):
        publish_model(tmp_path, BrightSpotDetector(line, "v1"), save=_save)
    assert (tmp_path / "a" / "current").read_text().strip() == "v1"
    assert artifact_path(tmp_path, "a", "v1").is_file()
    store = ModelStore(tmp_path, loader=_loader, cache_size=2, refresh_s=0,
                       on_loaded=lambda line, version: loads.append((line, version)))
    assert store.get("a").metadata.version == "v1"
    store.get("b")
    store.get("a")
    store.get("c")  # evicts b, the least recently used
    assert store.loaded() == [("a", "v1"), ("c", "v1")]
    publish_model(tmp_path, BrightSpotDetector("a", "v2"), save=_save)
    assert store.get("a").metadata.version == "v2"
    set_current(tmp_path, "a", "v1")
    assert store.get("a").metadata.version == "v1"
    assert loads == [("a", "v1"), ("b", "v1"), ("c", "v1"), ("a", "v2"), ("a", "v1")]


def test_unknown_line_and_broken_version(tmp_path):
    store = ModelStore(tmp_path, loader=_loader, refresh_s=0)
    with pytest.raises(ModelNotFoundError) as caught:
        store.get("nope")
    assert caught.value.reason == "unknown_product_line"
    publish_model(tmp_path, BrightSpotDetector("a", "v1"), save=_save)
    assert store.get("a").metadata.version == "v1"
    # a promoted version whose artifact is broken: the previous one keeps serving
    publish_model(tmp_path, BrightSpotDetector("a", "v2"), save=_save)

    def failing(path, device, line):
        raise OSError("truncated")

    store._loader = failing
    assert store.get("a").metadata.version == "v1"
    with pytest.raises(ValueError):
        set_current(tmp_path, "a", "../../etc/passwd")


def test_metrics_endpoint_serves_prometheus_text_with_process_metrics():
    import urllib.request

    from prometheus_client import Counter, Histogram

    registry = new_registry()
    frames = Counter("frames_total", "Frames.", ["line"], registry=registry)
    latency = Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry)
    frames.labels(line="a").inc()
    frames.labels(line="a").inc(2)
    for value in (0.05, 0.5, 5):
        latency.observe(value)
    with HealthServer(registry, lambda: True, lambda: False) as server:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            kind = response.headers["Content-Type"]
            text = response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(base + "/readyz", timeout=5)
    assert kind.startswith("text/plain") and "version=" in kind
    assert 'frames_total{line="a"} 3.0' in text
    assert 'latency_seconds_bucket{le="0.1"} 1.0' in text
    assert 'latency_seconds_bucket{le="1.0"} 2.0' in text
    assert 'latency_seconds_bucket{le="+Inf"} 3.0' in text
    assert "latency_seconds_count 3.0" in text
    assert "process_cpu_seconds_total" in text and "python_gc_objects_collected_total" in text
    assert not_ready.value.code == 503
    with pytest.raises(ValueError):
        frames.labels(line="a", extra="x")


def test_settings_name_missing_fields_and_hide_secrets(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(__import__("os").environ):
        if name.startswith("LINEWATCH_"):
            monkeypatch.delenv(name)
    with pytest.raises(ValidationError) as caught:
        WorkerSettings()
    assert {"kafka", "redis", "model_store"} <= {e["loc"][0] for e in caught.value.errors()}
    monkeypatch.setenv("LINEWATCH_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("LINEWATCH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LINEWATCH_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("LINEWATCH_KAFKA__SASL_USERNAME", "user")
    monkeypatch.setenv("LINEWATCH_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("LINEWATCH_REDIS__URL", "rediss://:hunter2@redis:6380/0")
    monkeypatch.setenv("LINEWATCH_MODEL_STORE", str(tmp_path))
    monkeypatch.setenv("LINEWATCH_BATCHING__MAX_BATCH_SIZE", "16")
    settings = WorkerSettings()
    assert settings.batching.max_batch_size == 16
    assert settings.http.host == "127.0.0.1"
    assert "s3cret" not in repr(settings) and "hunter2" not in repr(settings)
    kwargs = settings.kafka.client_kwargs()
    assert kwargs["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert kwargs["sasl_plain_password"] == "s3cret"
    monkeypatch.delenv("LINEWATCH_KAFKA__SASL_PASSWORD")
    with pytest.raises(ValidationError):
        WorkerSettings()
    with pytest.raises(ValidationError) as caught:
        ProducerSettings()
    assert {"camera_id", "product_line", "source"} <= {
        e["loc"][0] for e in caught.value.errors()}
