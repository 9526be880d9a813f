"""The index of wildcard subscriptions: per component count, a trie keyed by URI component in
which an empty pattern component matches any one, so a topic walks only its own branches."""

from __future__ import annotations

from typing import Any, Iterator

from eformws.transports.wamp.topics import wildcard_matches

ANY = ""  # a pattern's empty component: matches any one component


class _Node:
    """An edge and the node it leads to. `run` is the edge's components (one or more: a chain
    without branches is one node, so a long pattern costs one node, not one per component);
    `children` are keyed by the first component of their run; `value` is set on leaves."""

    __slots__ = ("run", "children", "value")

    def __init__(self, run: tuple[str, ...], value: Any = None):
        self.run = run
        self.children: dict[str, _Node] | None = None
        self.value = value


class WildcardIndex:
    """Wildcard patterns (`eform..kiosk-1`) to values, after Crossbar's `UriObservationMap`.
    A pattern of n components lives in the trie of n-component patterns, so every pattern
    in a trie ends at a leaf of the same depth. `matching(uri)` follows, from each node
    reached, the child of the topic's next component and the `ANY` child only: at most
    2^d nodes at depth d whatever the number of patterns (topics have 2 or 3 components)."""

    def __init__(self):
        self._roots: dict[int, _Node] = {}  # component count -> root (run ())
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def node_count(self) -> int:
        """Nodes held, roots included: 0 once every pattern is removed (nothing kept)."""
        count, stack = 0, list(self._roots.values())
        while stack:
            node = stack.pop()
            count += 1
            if node.children:
                stack.extend(node.children.values())
        return count

    def __setitem__(self, pattern: str, value: Any) -> None:
        components = pattern.split(".")
        n = len(components)
        node = self._roots.get(n)
        if node is None:
            node = self._roots[n] = _Node(())
        i = 0
        while i < n:
            first = components[i]
            child = node.children.get(first) if node.children else None
            if child is None:
                if node.children is None:
                    node.children = {}
                node.children[first] = _Node(tuple(components[i:]), value)
                self._count += 1
                return
            run = child.run
            common = 1
            while common < len(run) and run[common] == components[i + common]:
                common += 1
            if common < len(run):  # the pattern leaves the edge midway: split it there
                middle = _Node(run[:common])
                child.run = run[common:]
                middle.children = {child.run[0]: child}
                node.children[first] = middle
                child = middle
            node = child
            i += common
        node.value = value  # the very pattern again: its leaf

    def __delitem__(self, pattern: str) -> None:
        """Remove a pattern and every node only it needed (a parent left with one child is
        merged into it), so the index never keeps what no pattern uses."""
        components = pattern.split(".")
        n = len(components)
        root = self._roots.get(n)
        path: list[_Node] = []
        node, i = root, 0
        while node is not None and i < n:
            path.append(node)
            child = node.children.get(components[i]) if node.children else None
            if child is None or tuple(components[i:i + len(child.run)]) != child.run:
                node = None
                break
            node, i = child, i + len(child.run)
        if node is None or node.value is None:
            raise KeyError(pattern)
        self._count -= 1
        parent = path.pop()
        del parent.children[node.run[0]]
        if parent is root:
            if not parent.children:
                del self._roots[n]
        elif len(parent.children) == 1:  # an inner node branches or goes: merge it into its child
            (only,) = parent.children.values()
            only.run = parent.run + only.run
            path[-1].children[only.run[0]] = only

    def matching(self, uri: str) -> Iterator[Any]:
        """The values of every pattern `uri` matches (each once, in no particular order)."""
        components = uri.split(".")
        n = len(components)
        root = self._roots.get(n)
        if root is None:
            return
        reached = [(root, 0)]
        while reached:
            node, i = reached.pop()
            if i == n:
                yield node.value
                continue
            children = node.children
            component = components[i]
            for key in (component, ANY) if component != ANY else (ANY,):
                child = children.get(key)
                if child is not None:
                    end = i + len(child.run)
                    if len(child.run) == 1 or wildcard_matches(child.run, components[i:end]):
                        reached.append((child, end))
