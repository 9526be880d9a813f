"""Summaries of py-spy's raw (collapsed) stacks: the functions with the most samples on top
of the stack (self) and anywhere on it (inclusive), as shares of all samples; and the busy
samples' shares by named categories of frames (`categorize`)."""

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


# innermost frames of a thread that waits (py-spy samples some of them as running): not busy
IDLE = ("threading.py:Condition.wait", "epollreactor.py:EPollReactor.doPoll", "queue.py:Queue.get",
        "selectors.py:EpollSelector.select")


def _stacks(path: Path):
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if frames:
            yield frames, int(count)


def categorize(path: Path | None, categories: list[tuple[str, tuple[str, ...]]]) -> dict | None:
    """Shares (%) of the busy samples by category: a sample goes to the category of its
    innermost frame whose name contains one of the category's strings (the first category
    listed, when a frame matches several), else to "other"; samples whose innermost frame
    waits (IDLE) are left out."""
    if path is None or not Path(path).exists():
        return None
    counts: collections.Counter = collections.Counter()
    for frames, n in _stacks(path):
        if frames[-1].endswith(IDLE):
            continue
        for frame in reversed(frames):
            found = next((name for name, keys in categories if any(k in frame for k in keys)), None)
            if found is not None:
                break
        counts[found or "other"] += n
    total = sum(counts.values())
    return {"busy_samples": total,
            **{name: round(100.0 * n / total, 1) for name, n in counts.most_common()}} if total else None


def summarize(path: Path | None, top: int = 15) -> dict | None:
    if path is None or not Path(path).exists():
        return None
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for frames, n in _stacks(path):
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n

    def share(counter):
        return [[name, round(100.0 * n / total, 1)] for name, n in counter.most_common(top)]

    return {"samples": total, "file": str(path), "self_pct": share(own), "inclusive_pct": share(inclusive)}
