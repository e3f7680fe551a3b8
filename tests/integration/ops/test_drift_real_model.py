"""End to end with the real model: blurred or noisy real tiles raise a drift alert.

Fits a small SimpleNet on MTD good tiles, stores the artifact in a model store, scores
unseen good tiles as they are, blurred (a camera out of focus), noisy (a sensor at high
gain) and brightened, streams the results through Redis and lets the drift monitor compare
them with the artifact's calibration scores. The default model standardises each frame's
grey level and contrast, so brighter light alone moves no score and raises no alert.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from pipeline.observability import new_registry
from tests.integration.ops.results import LINE, publish_results
from workers.drift_monitor.monitor import DriftMonitor, ModelStoreReference
from workers.drift_monitor.statistics import DriftConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MTD = Path("/work/shared/data/mtd")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    trainer = pytest.importorskip("model.trainer", reason="model package not in this checkout")
    artifact = pytest.importorskip("model.artifact", reason="model package not in this checkout")
    data = pytest.importorskip("model.data", reason="model package not in this checkout")
    if not (MTD / "train" / "good").is_dir():
        pytest.skip(f"{MTD} absent: the MTD development split is needed")
    paths = data.list_images(MTD / "train" / "good")
    fit_images = data.read_images(paths[:120])
    unseen = data.read_images(paths[120:200])
    config = trainer.FitConfig(image_size=128, epochs=3, holdout_fraction=0.4, seed=0)
    detector = trainer.fit_detector(fit_images, config=config, product_line=LINE)
    store = tmp_path_factory.mktemp("store")
    version = detector.metadata.version
    path = store / LINE / "versions" / f"{version}.safetensors"
    path.parent.mkdir(parents=True)
    artifact.save_artifact(detector, path)
    (store / LINE / "current").write_text(version)
    return detector, store, version, unseen


def _drain(monitor: DriftMonitor) -> None:
    while monitor.poll_once() > 0:
        pass


def _events(client: redis.Redis, prefix: str) -> list[str]:
    return [f[b"event"].decode() for _, f in client.xrange(f"{prefix}:drift:{LINE}")]


def _shifted(images: list[np.ndarray], shift: str) -> list[np.ndarray]:
    if shift == "brighter":
        return [cv2.convertScaleAbs(im, alpha=1.3, beta=20) for im in images]
    if shift == "noisy":
        rng = np.random.default_rng(0)
        return [
            np.clip(im + rng.normal(0.0, 25.0, im.shape), 0, 255).astype(np.uint8) for im in images
        ]
    if shift == "blurred":
        return [cv2.GaussianBlur(im, (0, 0), 3) for im in images]
    raise ValueError(f"unknown shift {shift!r}")


@pytest.mark.parametrize(
    ("shift", "drifts"), [("blurred", True), ("noisy", True), ("brighter", False)]
)
def test_shifted_real_frames_raise_drift_normal_ones_do_not(
    fitted, shift: str, drifts: bool, redis_client: redis.Redis, key_prefix: str
) -> None:
    detector, store, version, unseen = fitted
    assert detector.metadata.input_standardisation  # the default
    shifted_images = _shifted(unseen, shift)
    normal = detector.predict(unseen).normalized_scores
    shifted = detector.predict(shifted_images).normalized_scores

    config = DriftConfig(
        window=80, min_samples=60, raise_above=0.3, clear_below=0.15, evaluate_every=10
    )
    registry = new_registry()
    monitor = DriftMonitor(
        redis_client,
        key_prefix,
        ModelStoreReference(store),
        config,
        registry,
        group="drift-e2e",
        lines=[LINE],
        block_ms=50,
    )
    publish_results(redis_client, key_prefix, normal, version, 0)
    _drain(monitor)
    assert monitor.detector(LINE).sample_count == len(normal)
    assert _events(redis_client, key_prefix) == [], "unseen good tiles must not drift"
    assert registry.get_sample_value("linewatch_drift_active", {"line": LINE}) == 0.0

    publish_results(redis_client, key_prefix, shifted, version, len(normal))
    _drain(monitor)
    if not drifts:
        assert _events(redis_client, key_prefix) == [], f"{shift} frames must not drift"
        assert abs(float(np.mean(shifted)) - float(np.mean(normal))) < 0.1
        return
    assert _events(redis_client, key_prefix) == ["drift_started"]
    assert registry.get_sample_value("linewatch_drift_active", {"line": LINE}) == 1.0
    evaluation = monitor.detector(LINE).last_evaluation
    assert evaluation.window_mean > evaluation.reference_mean
