"""Secure and safe defaults: secrets never shown, producer settings, localhost binding."""

from __future__ import annotations

import logging

from pipeline.kafka.producer import KafkaRecordSink
from pipeline.observability import HealthServer, new_registry
from pipeline.redis.results import RedisResultSink
from pipeline.settings import HttpSettings, KafkaSettings, RedisSettings
from pipeline.wire.layout import RedisKeys
from workers.inference.settings import WorkerSettings

SECRET = "hunter2-very-secret"


def test_secrets_never_appear_in_repr_dump_or_logs(caplog, tmp_path):
    settings = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", security_protocol="SASL_SSL",
                            sasl_mechanism="SCRAM-SHA-512", sasl_username="svc",
                            sasl_password=SECRET, ssl_password=SECRET),
        redis=RedisSettings(url=f"rediss://:{SECRET}@127.0.0.1:1/0"), model_store=tmp_path)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert SECRET not in shown and "**********" in shown
    assert settings.kafka.client_kwargs()["sasl_plain_password"] == SECRET  # only here
    with caplog.at_level(logging.DEBUG):
        sink = RedisResultSink(settings.redis.model_copy(update={"socket_timeout_s": 0.2}))
        assert sink.ping() is False  # nothing listens: transient, logged nowhere with the URL
        logging.getLogger("test").info("settings: %s", settings)
        logging.getLogger("test").info("client: %r", sink._connection())
    assert SECRET not in caplog.text


def test_producer_defaults_keep_frames_safe():
    options = KafkaRecordSink(KafkaSettings(bootstrap_servers="127.0.0.1:1")).options
    assert options["acks"] == "all"
    assert options["enable_idempotence"] is True
    assert options["allow_auto_create_topics"] is False
    assert options.get("retries", float("inf")) > 0  # kafka-python default: retry until
    # delivery_timeout_ms; idempotence keeps retries from duplicating or reordering


def test_endpoints_bind_to_localhost_unless_configured():
    assert HttpSettings().host == "127.0.0.1"
    with HealthServer(new_registry(), lambda: True, lambda: True) as server:
        assert server._server.server_address[0] == "127.0.0.1"


def test_every_key_is_under_the_prefix():
    keys = RedisKeys("lw-prefix")
    built = [keys.result("cam", "f1"), keys.heatmap("cam", "f1"), keys.frame("cam", "f1"),
             keys.latest("cam"), keys.results("line"), keys.alerts("line"), keys.lines(),
             keys.cameras("line"), keys.drift("line"), keys.models()]
    assert all(k.startswith("lw-prefix:") for k in built)
