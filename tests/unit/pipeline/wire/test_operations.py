import json

import pytest

from pipeline.errors import SchemaError
from pipeline.wire.layout import RedisKeys
from pipeline.wire.operations import Review, WorkerHealth


def test_worker_health_round_trips_and_refuses_unknown_versions():
    health = WorkerHealth("w-1", 1.5, 12.5, {"frames/0": 3, "frames/1": 4}, True,
                          {"undecodable_payload": 2}, {"tiles": "v7"}, {"caps": ["cam-9"]})
    again = WorkerHealth.from_json(health.to_json())
    assert again == health and again.lag_total == 7
    data = json.loads(health.to_json()) | {"schema_version": 2}
    with pytest.raises(SchemaError, match="unknown"):
        WorkerHealth.from_json(json.dumps(data))
    with pytest.raises(SchemaError, match="malformed"):
        WorkerHealth.from_json(json.dumps({"schema_version": 1, "worker_id": "w"}))


def test_review_checks_its_fields():
    review = Review("tiles", "cam-1", "f1", "false_alarm", "operator", 10.0, 0.9, "v1", 9.0)
    assert Review.from_json(review.to_json()) == review and review.key == "cam-1/f1"
    with pytest.raises(SchemaError, match="verdict"):
        Review("tiles", "cam-1", "f1", "maybe", "operator", 10.0)
    with pytest.raises(SchemaError, match="reviewer"):
        Review("tiles", "cam-1", "f1", "acknowledged", "", 10.0)
    with pytest.raises(SchemaError):
        Review("tiles", "cam 1", "f1", "acknowledged", "operator", 10.0)


def test_console_keys_live_under_the_prefix_and_refuse_unsafe_ids():
    keys = RedisKeys("p")
    assert keys.health("w-1") == "p:health:w-1" and keys.workers() == "p:workers"
    assert keys.reviews("tiles") == "p:reviews:tiles"
    assert keys.false_alarms("tiles") == "p:false-alarms:tiles"
    assert keys.minutes("cam-1") == "p:minutes:cam-1"
    with pytest.raises(SchemaError):
        keys.health("w 1:x")
