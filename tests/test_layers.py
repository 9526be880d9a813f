"""The layers of docs/architecture.md, checked: every module of eformws is in exactly one
layer, and imports (at module level or inside a function) only from its own layer or the
ones below it. A new module fails here until it is given a layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eformws"

# Bottom to top; as docs/architecture.md lists them.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {
        "eformws", "wire", "message", "compat", "backoff", "deferreds", "latency", "logs", "metrics",
        "origins", "policy", "ratelimit", "sensitive", "listener", "flow", "sqlite",
    }),
    ("backends", {"redis", "nodes"}),
    ("state", {
        "events", "store", "store.memory", "store.sqlite", "store.redis",
        "sessions", "sessions.credentials", "sessions.sqlite", "sessions.redis",
        "bus", "bus.local", "bus.redis",
    }),
    ("delivery", {"hub", "replay", "catchup", "feed", "emitter", "broadcasts", "expiry"}),
    ("transports", {
        "websocket", "site", "api", "console", "client",
        "wamp", "wamp.router", "wamp.broker", "wamp.dealer", "wamp.codec", "wamp.errors", "wamp.framing",
        "wamp.session", "wamp.topics", "wamp.transport", "wamp.wildcards",
    }),
    ("runtime", {"config", "tls", "service", "workers", "tap", "demo", "demo_clients"}),
    ("tools", {"cli"}),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "eformws"


def imported(path: Path) -> set[str]:
    """The eformws modules a file imports (`from eformws import x` counts as eformws.x when
    x is a module), named relative to the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "eformws":
            if node.module == "eformws":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.removeprefix("eformws."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("eformws.") for a in node.names if a.name.split(".")[0] == "eformws")
    return found


def layer_of() -> dict[str, int]:
    return {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def test_every_module_is_in_exactly_one_layer():
    placed = [module for _, modules in LAYERS for module in modules]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    existing = {module_name(path) for path in PACKAGE.rglob("*.py")}
    assert existing - set(placed) == set(), "give these a layer in tests/test_layers.py and docs/architecture.md"
    assert set(placed) - existing == set(), "these are listed but do not exist"


def test_no_module_imports_from_a_layer_above_its_own():
    layers = layer_of()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for target in imported(path):
            if target in layers and layers[target] > layers[module]:
                upward.append(f"{module} ({LAYERS[layers[module]][0]}) imports {target} ({LAYERS[layers[target]][0]})")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    text = "from eformws.service import EformService\n\ndef later():\n    from eformws import cli\n"
    probe = tmp_path / "probe.py"
    probe.write_text(text)
    assert imported(probe) == {"service", "cli"}
