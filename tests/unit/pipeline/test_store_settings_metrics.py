import pytest
from pydantic import ValidationError

from pipeline.errors import ModelNotFoundError
from pipeline.model_store import ModelStore, artifact_path, publish_model, set_current
from pipeline.observability import MetricsRegistry
from pipeline.settings import ProducerSettings, WorkerSettings
from tests.twins import BrightSpotDetector


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


def test_metrics_render_prometheus_text():
    registry = MetricsRegistry()
    frames = registry.counter("frames_total", "Frames.", ["line"])
    latency = registry.histogram("latency_seconds", "Latency.", (0.1, 1.0))
    frames.inc(line="a")
    frames.inc(2, line="a")
    latency.observe(0.05)
    latency.observe(0.5)
    latency.observe(5)
    text = registry.render()
    assert 'frames_total{line="a"} 3' in text
    assert 'latency_seconds_bucket{le="0.1"} 1' in text
    assert 'latency_seconds_bucket{le="1"} 2' in text
    assert 'latency_seconds_bucket{le="+Inf"} 3' in text
    assert "latency_seconds_count 3" in text
    with pytest.raises(ValueError):
        frames.inc(line="a", extra="x")


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
