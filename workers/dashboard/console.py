"""What the console shows, read from Redis: the overview, a line's view, frames, reviews.

Everything is read in one pipelined round trip per request after listing the lines and
cameras: per camera its latest result and its per-minute counters summed inside Redis (a
small Lua script, four numbers back instead of 120 counters), per line its newest alerts
and drift event.

States of a camera (most severe first): ``no model`` (a worker found no model for its
line in its last health interval), ``offline`` (no result for ``offline_after_s``),
``drift`` (the line's drift alert is active), ``anomalies`` (anomalous frames in the last
``anomaly_window_s``), ``ok``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from typing import Any

import redis

from pipeline.errors import SchemaError
from pipeline.redis.results import RedisResultReader
from pipeline.wire.messages import ResultMessage, is_valid_id
from pipeline.wire.operations import Review, WorkerHealth

logger = logging.getLogger(__name__)

STATES = ("no model", "offline", "drift", "anomalies", "ok")
#: Reviews older than this are not looked up for the alert list's last alert per camera.
LAST_ALERTS_SCANNED = 500
FALSE_ALARMS_MAXLEN = 1000
WORKER_FORGET_S = 24 * 3600
#: Sums a camera's per-minute counters in Redis: [results in the last 5 minutes, results
#: in the last hour, anomalies in the last ARGV[2] minutes, anomalies in the last hour].
_SUMS_SCRIPT = """
local m = tonumber(ARGV[1])
local recent = tonumber(ARGV[2])
local fields = {}
for i = 0, 59 do
  fields[#fields + 1] = 'n:' .. (m - i)
  fields[#fields + 1] = 'a:' .. (m - i)
end
local v = redis.call('HMGET', KEYS[1], unpack(fields))
local f5, f60, ar, a60 = 0, 0, 0, 0
for i = 0, 59 do
  local n = tonumber(v[2 * i + 1]) or 0
  local a = tonumber(v[2 * i + 2]) or 0
  f60 = f60 + n
  a60 = a60 + a
  if i < 5 then f5 = f5 + n end
  if i < recent then ar = ar + a end
end
return {f5, f60, ar, a60}
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _result(raw: bytes | None) -> ResultMessage | None:
    if raw is None:
        return None
    try:
        return ResultMessage.from_json(raw)
    except SchemaError as error:
        logger.warning("unreadable result skipped: %s", error)
        return None


def _entries(raw: list[Any]) -> list[tuple[str, dict[str, bytes]]]:
    return [(_text(entry_id), {_text(k): v for k, v in fields.items()})
            for entry_id, fields in raw]


class Console:
    """The console's queries over what workers, drift monitor and reviews stored.

    Args:
        reader: Reader (client and key layout).
        offline_after_s: A camera without a result for this long is offline.
        anomaly_window_s: Anomalous frames this recently put a camera in state 'anomalies'.
    """

    def __init__(self, reader: RedisResultReader, offline_after_s: float = 120.0,
                 anomaly_window_s: int = 300) -> None:
        self.reader = reader
        self.client: redis.Redis = reader.client
        self.keys = reader.keys
        self.offline_after_s = offline_after_s
        self.anomaly_window_s = anomaly_window_s
        self._sums = self.client.register_script(_SUMS_SCRIPT)

    # ------------------------------------------------------------------ workers
    def workers(self, now: float | None = None) -> dict[str, WorkerHealth]:
        """Health records of the live workers (expired records are gone)."""
        now = time.time() if now is None else now
        self.client.zremrangebyscore(self.keys.workers(), 0, now - WORKER_FORGET_S)
        names = [_text(n) for n in self.client.zrange(self.keys.workers(), 0, -1)]
        names = [n for n in names if is_valid_id(n)]
        records = self.client.mget([self.keys.health(n) for n in names]) if names else []
        out = {}
        for name, raw in zip(names, records, strict=True):
            if raw is None:
                continue
            try:
                out[name] = WorkerHealth.from_json(raw)
            except SchemaError as error:
                logger.warning("health record of %s skipped: %s", name, error)
        return out

    # ------------------------------------------------------------------ overview
    def overview(self, now: float | None = None) -> dict[str, Any]:
        """One row per line and camera, the workers' health, the counts per state."""
        now = time.time() if now is None else now
        workers = self.workers(now)
        cameras: dict[str, set[str]] = {}
        for line in self.reader.lines():
            if is_valid_id(line):
                cameras[line] = {c for c in self.reader.cameras(line) if is_valid_id(c)}
        no_model: dict[str, set[str]] = {}
        for health in workers.values():
            for line, cams in health.no_model.items():
                valid = {c for c in cams if is_valid_id(c)}
                if is_valid_id(line):
                    no_model.setdefault(line, set()).update(valid)
                    cameras.setdefault(line, set()).update(valid)
        pairs = [(line, camera) for line in sorted(cameras) for camera in sorted(cameras[line])]
        minute = int(now // 60)
        recent_minutes = max(1, math.ceil(self.anomaly_window_s / 60))
        pipe = self.client.pipeline(transaction=False)
        for _, camera in pairs:
            pipe.get(self.keys.latest(camera))
            self._sums(keys=[self.keys.minutes(camera)], args=[minute, recent_minutes],
                       client=pipe)
        for line in cameras:
            pipe.xrevrange(self.keys.alerts(line), count=LAST_ALERTS_SCANNED)
            pipe.xrevrange(self.keys.drift(line), count=1)
        replies = pipe.execute()
        per_camera, per_line = replies[:2 * len(pairs)], replies[2 * len(pairs):]
        drift: dict[str, dict[str, str] | None] = {}
        last_alert: dict[tuple[str, str], dict[str, Any]] = {}
        for index, line in enumerate(cameras):
            for _, fields in _entries(per_line[2 * index]):
                alert = _result(fields.get("result"))
                if alert is not None and (line, alert.camera_id) not in last_alert:
                    last_alert[(line, alert.camera_id)] = {
                        "frame_id": alert.frame_id, "capture_ts": alert.capture_ts,
                        "score": alert.normalized_score}
            events = _entries(per_line[2 * index + 1])
            drift[line] = {k: _text(v) for k, v in events[0][1].items()} if events else None
        rows = []
        for index, (line, camera) in enumerate(pairs):
            latest = _result(per_camera[2 * index])
            rows.append(self._row(line, camera, latest, per_camera[2 * index + 1], now,
                                  camera in no_model.get(line, ()), drift.get(line),
                                  last_alert.get((line, camera)), workers))
        counts = {state: sum(1 for r in rows if r["state"] == state) for state in STATES}
        return {"now": now, "rows": rows, "counts": counts,
                "offline_after_s": self.offline_after_s,
                "workers": [self._worker(h, now) for h in workers.values()],
                "drift": drift}

    def _row(self, line: str, camera: str, latest: ResultMessage | None, sums: list[Any],
             now: float, no_model: bool, drift: dict[str, str] | None,
             last_alert: dict[str, Any] | None,
             workers: dict[str, WorkerHealth]) -> dict[str, Any]:
        frames_5m, frames_hour, anomalies_recent, anomalies_hour = (int(v) for v in sums)
        # frames/s over the last 5 minutes, the current minute counted as far as it went
        window_s = 240 + (now % 60)
        age = None if latest is None else max(0.0, now - latest.capture_ts)
        if no_model:
            state = "no model"
        elif age is None or age > self.offline_after_s:
            state = "offline"
        elif drift is not None and drift.get("event") == "drift_started":
            state = "drift"
        elif anomalies_recent > 0:
            state = "anomalies"
        else:
            state = "ok"
        worker = workers.get(latest.worker_id) if latest is not None else None
        return {
            "line": line, "camera": camera, "state": state,
            "frames_per_s": round(frames_5m / window_s, 3),
            "frames_1h": frames_hour, "anomalies_1h": anomalies_hour,
            "anomaly_rate_1h": (anomalies_hour / frames_hour) if frames_hour else None,
            "last_seen_s": None if age is None else round(age, 1),
            "last_frame": None if latest is None else latest.frame_id,
            "last_score": None if latest is None else latest.normalized_score,
            "last_alert": last_alert,
            "model_version": None if latest is None else latest.model_version,
            "worker": None if latest is None else latest.worker_id,
            "worker_alive": worker is not None,
            "worker_lag": None if worker is None else worker.lag_total,
            "worker_paused": None if worker is None else worker.paused,
            "worker_dead_letters": None if worker is None else worker.dead_letters,
        }

    @staticmethod
    def _worker(health: WorkerHealth, now: float) -> dict[str, Any]:
        return asdict(health) | {"lag_total": health.lag_total,
                                 "age_s": round(max(0.0, now - health.ts), 1)}

    # ------------------------------------------------------------------ line view
    def line(self, line: str, count: int, max_alerts: int, camera: str | None = None,
             review: str | None = None, min_score: float | None = None) -> dict[str, Any]:
        """A line's score series (oldest first) and its alerts (newest first, filtered).

        Args:
            line: Product line.
            count: Newest results in the series.
            max_alerts: Newest alerts scanned.
            camera: Only this camera's alerts.
            review: ``unreviewed``, ``acknowledged`` or ``false_alarm``.
            min_score: Only alerts scoring at least this (normalised).
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.xrevrange(self.keys.results(line), count=count)
        pipe.xrevrange(self.keys.alerts(line), count=max_alerts)
        pipe.xrevrange(self.keys.drift(line), count=1)
        results_raw, alerts_raw, drift_raw = pipe.execute()
        series = []
        for _, fields in reversed(_entries(results_raw)):
            r = _result(fields.get("result"))
            if r is not None:
                series.append({"t": r.capture_ts, "score": r.normalized_score, "label": r.label,
                               "camera": r.camera_id, "frame_id": r.frame_id})
        series.sort(key=lambda point: point["t"])  # stream order is arrival, not capture
        alerts = [a for a in (_result(f.get("result")) for _, f in _entries(alerts_raw)) if a]
        reviews = self.reviews(line, [f"{a.camera_id}/{a.frame_id}" for a in alerts])
        listed = []
        for alert in alerts:
            verdict = reviews.get(f"{alert.camera_id}/{alert.frame_id}")
            status = "unreviewed" if verdict is None else verdict.verdict
            if (camera and alert.camera_id != camera) or (review and status != review):
                continue
            if min_score is not None and alert.normalized_score < min_score:
                continue
            listed.append({"camera": alert.camera_id, "frame_id": alert.frame_id,
                           "t": alert.capture_ts, "score": alert.normalized_score,
                           "model_version": alert.model_version, "review": status,
                           "reviewed_by": None if verdict is None else verdict.by,
                           "reviewed_ts": None if verdict is None else verdict.ts})
        drift = _entries(drift_raw)
        return {"line": line, "threshold": 0.5, "series": series, "alerts": listed,
                "alerts_scanned": len(alerts),
                "cameras": sorted({a.camera_id for a in alerts} | {p["camera"] for p in series}),
                "drift": {k: _text(v) for k, v in drift[0][1].items()} if drift else None}

    def reviews(self, line: str, alert_keys: list[str]) -> dict[str, Review]:
        """Stored reviews of some alerts (``camera/frame_id``)."""
        if not alert_keys:
            return {}
        raw = self.client.hmget(self.keys.reviews(line), alert_keys)
        out = {}
        for key, value in zip(alert_keys, raw, strict=True):
            if value is not None:
                try:
                    out[key] = Review.from_json(value)
                except SchemaError as error:
                    logger.warning("review %s of %s skipped: %s", key, line, error)
        return out

    # ------------------------------------------------------------------ frames, reviews
    def frame(self, camera: str, frame_id: str) -> dict[str, Any] | None:
        """A frame's result and whether its image and heatmap are still stored."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.result(camera, frame_id))
        pipe.exists(self.keys.frame(camera, frame_id))
        pipe.exists(self.keys.heatmap(camera, frame_id))
        raw, has_frame, has_heatmap = pipe.execute()
        result = _result(raw)
        if result is None:
            return None
        review = self.reviews(result.product_line, [f"{camera}/{frame_id}"])
        verdict = review.get(f"{camera}/{frame_id}")
        return {"result": asdict(result), "frame": bool(has_frame),
                "heatmap": bool(has_heatmap),
                "review": None if verdict is None else asdict(verdict)}

    def review(self, line: str, camera: str, frame_id: str, verdict: str,
               by: str, now: float | None = None) -> dict[str, Any]:
        """Store an operator's verdict on an alert; a false alarm also keeps the frame.

        Returns:
            ``{"review": ..., "frame_kept": bool}``; ``frame_kept`` is False for a false
            alarm whose frame already expired (the review is stored, training cannot use it).

        Raises:
            LookupError: The frame has no stored result on this line.
            SchemaError: An invalid verdict or reviewer.
        """
        result = self.reader.result(camera, frame_id)
        if result is None or result.product_line != line:
            raise LookupError(f"no result of {camera}/{frame_id} on line {line}")
        review = Review(line=line, camera_id=camera, frame_id=frame_id, verdict=verdict, by=by,
                        ts=time.time() if now is None else now,
                        normalized_score=result.normalized_score,
                        model_version=result.model_version, capture_ts=result.capture_ts)
        frame_kept = False
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.reviews(line), review.key, review.to_json())
        if verdict == "false_alarm":
            jpeg = self.reader.frame(camera, frame_id)
            if jpeg:
                pipe.xadd(self.keys.false_alarms(line),
                          {"review": review.to_json(), "frame": jpeg},
                          maxlen=FALSE_ALARMS_MAXLEN, approximate=True)
                frame_kept = True
        pipe.execute()
        logger.info("%s marked %s/%s on %s as %s", by, camera, frame_id, line, verdict)
        return {"review": asdict(review), "frame_kept": frame_kept}
