"""Sensitive fields: which parts of an envelope's `data` only some roles may see, and the
redacted copy of an envelope for everyone else (made once per message, never per client)."""

from __future__ import annotations

from typing import Iterable


class Redactor:
    """`fields` are paths inside `data`, dotted for nested objects (`metadata.ownerKey`)."""

    def __init__(self, fields: Iterable[str]):
        self.paths = tuple(tuple(field.split(".")) for field in fields)

    def redact(self, envelope: dict) -> dict:
        """`envelope` without the sensitive fields; the same object when it has none, so
        the caller can tell that both audiences may share one frame."""
        data = envelope.get("data")
        if not isinstance(data, dict) or not self.paths:
            return envelope
        redacted = _without(data, self.paths)
        if redacted is data:
            return envelope
        return {**envelope, "data": redacted}


def _without(value: dict, paths: tuple[tuple[str, ...], ...]) -> dict:
    """`value` minus every path; copies only the objects on the way to a removed field."""
    copy = None
    for path in paths:
        head = path[0]
        source = copy if copy is not None else value
        if head not in source:
            continue
        if len(path) == 1:
            copy = dict(source) if copy is None else copy
            del copy[head]
            continue
        inner = source[head]
        if isinstance(inner, dict):
            reduced = _without(inner, (path[1:],))
            if reduced is not inner:
                copy = dict(source) if copy is None else copy
                copy[head] = reduced
    return value if copy is None else copy
