"""Summaries of py-spy's raw (collapsed) stacks: the functions with the most samples on top
of the stack (self) and anywhere on it (inclusive), as shares of all samples."""

from __future__ import annotations

import collections
import re
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `file.py:func` (line numbers dropped, paths shortened)."""
    found = FRAME.match(frame.strip())
    if not found:
        return frame.strip()
    path = found.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{found.group('func')}"


def summarize(path: Path | None, top: int = 15) -> dict | None:
    if path is None or not Path(path).exists():
        return None
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n

    def share(counter):
        return [[name, round(100.0 * n / total, 1)] for name, n in counter.most_common(top)]

    return {"samples": total, "file": str(path), "self_pct": share(own), "inclusive_pct": share(inclusive)}
