"""The layers of docs/architecture.md, checked: every module of eformws is in exactly one
layer, and imports (at module level or inside a function) only from its own layer or the
ones below it. A new module fails here until it is given a layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eformws"

# Bottom to top; as docs/architecture.md lists them. A folder is in one layer (all the
# modules under it); the few top-level modules, named from outside the package, are listed.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"eformws", "core", "logs"}),
    ("backends", {"backends"}),
    ("state", {"events", "events.store", "sessions", "bus"}),
    ("delivery", {"delivery", "emitter"}),
    ("transports", {"transports", "http", "client"}),
    ("runtime", {"runtime", "tap"}),
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


def layer_of(module: str) -> int | None:
    """The index of `module`'s layer: that of the longest listed name it is or is under."""
    matches = [(len(name), index) for index, (_, names) in enumerate(LAYERS) for name in names
               if module == name or (name != "eformws" and module.startswith(name + "."))]
    return max(matches)[1] if matches else None


def modules() -> list[str]:
    return sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    assert [module for module in modules() if layer_of(module) is None] == [], \
        "give these a layer in tests/test_layers.py and docs/architecture.md"


def test_every_listed_name_exists_once():
    listed = [name for _, names in LAYERS for name in names]
    assert len(listed) == len(set(listed)), "a name is in two layers"
    assert set(listed) - set(modules()) == set(), "these are listed but do not exist"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for target in imported(path):
            below = layer_of(target)
            if below is not None and below > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[below][0]})")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    text = "from eformws.runtime.service import EformService\n\ndef later():\n    from eformws import cli\n"
    probe = tmp_path / "probe.py"
    probe.write_text(text)
    assert imported(probe) == {"runtime.service", "cli"}
    assert (layer_of("runtime.service"), layer_of("cli")) == (5, 6)


def test_a_module_takes_the_layer_of_its_folder():
    assert LAYERS[layer_of("events.store.redis")][0] == "state"
    assert LAYERS[layer_of("transports.wamp.broker")][0] == "transports"
    assert layer_of("somewhere.new") is None
