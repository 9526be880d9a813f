"""The Python samples of the docs, read from the Markdown so that they cannot rot: every one
compiles and names nothing it does not define or import; the emit samples of
docs/events.md run against a real gateway and store what they say."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

DOCS = Path(__file__).resolve().parent.parent / "docs"
SAMPLE = re.compile(r"```python\n(.*?)```", re.S)


def samples(name: str) -> list[str]:
    return SAMPLE.findall((DOCS / name).read_text())


def undefined_names(source: str) -> set[str]:
    """Names a sample reads that it never binds (assignment, import, def, argument, loop,
    comprehension) and that are no builtins."""
    tree = ast.parse(source)
    bound, read = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read - bound


ALL = [(name, index) for name in ("client.md", "events.md", "wamp.md") for index in range(len(samples(name)))]


@pytest.mark.parametrize(("name", "index"), ALL, ids=[f"{name}-{index + 1}" for name, index in ALL])
def test_every_python_sample_of_the_docs_compiles_and_defines_what_it_uses(name, index):
    source = samples(name)[index]
    compile(source, f"{name} sample {index + 1}", "exec")
    page_so_far = "\n".join(samples(name)[: index + 1])  # a page is read from the top: earlier imports count
    assert undefined_names(page_so_far) == set(), f"{name} sample {index + 1}:\n{source}"


def as_results(source: str) -> ast.Module:
    """The sample with each top-level expression's value appended to `_results`."""
    tree = ast.parse(source)
    for position, node in enumerate(tree.body):
        if isinstance(node, ast.Expr):
            tree.body[position] = ast.parse("_results.append(None)").body[0]
            tree.body[position].value.args[0] = node.value
    return ast.fix_missing_locations(tree)


@pytest_twisted.ensureDeferred
async def test_the_emit_samples_of_events_md_store_what_they_say(server):
    namespace: dict = {"_results": []}
    for index, source in enumerate(samples("events.md")):
        exec(compile(as_results(source), f"events.md sample {index + 1}", "exec"), namespace)
    deferreds = namespace["_results"] + [namespace["d"]]  # the last sample keeps its Deferred in `d`
    stored = await defer.gatherResults(deferreds, consumeErrors=True)
    assert [envelope["type"] for envelope in stored] == [
        "locker_state_changed", "help_requested", "help_status_updated", "command_applied", "system_status",
        "locker_state_changed",
    ]
    assert all(envelope["seq"] for envelope in stored)
