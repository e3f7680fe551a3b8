"""Model store versions: listing, retention, rollback, refresh on notification, events."""

from __future__ import annotations

import threading

import pytest

from pipeline.model_store import (
    ModelStore,
    artifact_path,
    list_versions,
    prune_versions,
    publish_model,
    read_current,
    report_path,
    rollback,
    set_current,
)
from pipeline.redis.model_events import ModelUpdateListener
from pipeline.wire.layout import RedisKeys
from pipeline.wire.messages import ModelEvent
from tests.twins import BrightSpotDetector


def _save(detector, path):
    path.write_text(detector.metadata.version)


def _loader(path, device, line):
    return BrightSpotDetector(line, path.read_text())


def _created_at(path, line):
    """Twin of the verified header read: the file holds its version; 'corrupt' fails."""
    text = path.read_text()
    if text == "corrupt":
        raise ValueError(f"{path} failed its checksum")
    return f"2026-01-0{text[-1]}T00:00:00+00:00"


def _store_with(tmp_path, versions, current=None):
    for version in versions:
        publish_model(tmp_path, BrightSpotDetector("a", version), save=_save)
    if current is not None:
        set_current(tmp_path, "a", current)
    return tmp_path


def test_list_versions_oldest_first_marks_current_and_unusable(tmp_path):
    _store_with(tmp_path, ["v3", "v1", "v2"], current="v2")
    artifact_path(tmp_path, "a", "v9").write_text("corrupt")
    infos = list_versions(tmp_path, "a", _created_at)
    assert [i.version for i in infos] == ["v9", "v1", "v2", "v3"]
    assert [i.current for i in infos] == [False, False, True, False]
    assert infos[0].error and "checksum" in infos[0].error
    assert list_versions(tmp_path, "nothing-here", _created_at) == []


def test_prune_keeps_newest_k_and_always_the_current(tmp_path):
    _store_with(tmp_path, ["v1", "v2", "v3", "v4", "v5"], current="v1")
    report_path(tmp_path, "a", "v2").write_text("{}")
    removed = prune_versions(tmp_path, "a", keep=2, read_created_at=_created_at)
    assert removed == ["v2", "v3"]
    assert [i.version for i in list_versions(tmp_path, "a", _created_at)] == ["v1", "v4", "v5"]
    assert not report_path(tmp_path, "a", "v2").exists()
    assert read_current(tmp_path, "a") == "v1"
    with pytest.raises(ValueError):
        prune_versions(tmp_path, "a", keep=0, read_created_at=_created_at)


def test_rollback_to_previous_then_to_a_named_version(tmp_path):
    _store_with(tmp_path, ["v1", "v2", "v3"])
    artifact_path(tmp_path, "a", "v0").write_text("corrupt")
    assert rollback(tmp_path, "a", read_created_at=_created_at) == ("v3", "v2")
    assert rollback(tmp_path, "a", read_created_at=_created_at) == ("v2", "v1")
    with pytest.raises(FileNotFoundError, match="older"):
        rollback(tmp_path, "a", read_created_at=_created_at)  # v0 does not verify
    assert read_current(tmp_path, "a") == "v1"
    assert rollback(tmp_path, "a", to="v3", read_created_at=_created_at) == ("v1", "v3")
    with pytest.raises(FileNotFoundError):
        rollback(tmp_path, "a", to="v7", read_created_at=_created_at)
    with pytest.raises(ValueError):
        rollback(tmp_path, "a", to="v0", read_created_at=_created_at)
    assert read_current(tmp_path, "a") == "v3", "a refused rollback leaves the pointer"


def test_refresh_loads_before_switching_and_keeps_the_old_model_on_failure(tmp_path):
    _store_with(tmp_path, ["v1"])
    store = ModelStore(tmp_path, loader=_loader, refresh_s=3600)
    assert store.get("a").metadata.version == "v1"
    publish_model(tmp_path, BrightSpotDetector("a", "v2"), save=_save)
    assert store.get("a").metadata.version == "v1", "pointer cached for refresh_s"
    assert store.refresh("a") == "v2"
    assert ("a", "v2") in store.loaded()
    assert store.get("a").metadata.version == "v2"
    # a promoted artifact that cannot be loaded: refresh refuses, v2 keeps serving
    publish_model(tmp_path, BrightSpotDetector("a", "v3"), save=_save)
    artifact_path(tmp_path, "a", "v3").write_text("")

    def strict(path, device, line):
        if not path.read_text():
            raise OSError("truncated")
        return _loader(path, device, line)

    store._loader = strict
    assert store.refresh("a") is None
    assert store.get("a").metadata.version == "v2"
    assert store.lines() == ["a"]


def test_refresh_does_not_block_the_serving_thread(tmp_path):
    _store_with(tmp_path, ["v1"])
    release = threading.Event()
    loading = threading.Event()

    def slow(path, device, line):
        if path.read_text() == "v2":
            loading.set()
            release.wait(5)
        return _loader(path, device, line)

    store = ModelStore(tmp_path, loader=slow, refresh_s=3600)
    store.get("a")
    publish_model(tmp_path, BrightSpotDetector("a", "v2"), save=_save)
    refresher = threading.Thread(target=store.refresh, args=("a",))
    refresher.start()
    assert loading.wait(5)
    assert store.get("a").metadata.version == "v1", "served from cache while v2 loads"
    release.set()
    refresher.join(5)
    assert store.get("a").metadata.version == "v2"


def test_model_event_round_trip_and_validation():
    event = ModelEvent("tiles", "20260101T000000Z-abcd", "promoted", "older")
    assert ModelEvent.from_json(event.to_json()) == event
    for bad in ('{"line": "tiles"}', "not json", '{"line": "x", "version": "v", "event": "x"}',
                '{"line": "bad line/", "version": "v", "event": "promoted"}'):
        with pytest.raises(ValueError):
            ModelEvent.from_json(bad)
    assert RedisKeys("linewatch").models() == "linewatch:models"


class _Store:
    def __init__(self, lines):
        self._lines = lines
        self.refreshed: list[str] = []

    def refresh(self, line):
        self.refreshed.append(line)
        return "v2"

    def lines(self):
        return self._lines


def test_listener_refreshes_only_served_lines_and_ignores_garbage():
    store = _Store(["a"])
    listener = ModelUpdateListener(client=None, key_prefix="p", store=store)
    listener._handle(ModelEvent("a", "v2", "promoted").to_json().encode())
    listener._handle(ModelEvent("b", "v7", "promoted").to_json())
    listener._handle(b"garbage")
    assert store.refreshed == ["a"]
    assert listener.events_seen == 2
