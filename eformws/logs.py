"""JSON log output: `twistd --logger=eformws.logs.json_observer -n eformws` writes one JSON
object per line (time, level, namespace, text and the event's own fields) to stdout."""

from __future__ import annotations

import json
import sys

from twisted.logger import FileLogObserver, formatEvent

RESERVED = ("log_time", "log_level", "log_namespace", "log_format", "log_failure")


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def event_as_json(event: dict) -> str:
    """One line: `time` (epoch s), `level`, `namespace`, `text` (the formatted message),
    the event's fields (those not starting with `log_`), and `traceback` for a failure."""
    record = {
        "time": event.get("log_time"),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and not key.startswith("_"):
            record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


def json_observer(stream=None) -> FileLogObserver:
    """The observer factory twistd's `--logger` option names."""
    return FileLogObserver(stream or sys.stdout, event_as_json)
