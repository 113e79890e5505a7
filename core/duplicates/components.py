"""Union-find: the one home of "things linked (transitively) form a group".

Used by clustering (pair-graph components, with review constraints on top), review (linked
products, whether a group is confirmed) and evaluation (photos linked by labelled pairs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from typing import Any


class UnionFind:
    """Disjoint sets over nodes 0..size-1 (a list: fast for clustering's int nodes), or, without
    `size`, over any comparable hashable keys met on the way (a dict). A set's root is its
    smallest member, so groups do not depend on the order of the unions."""

    def __init__(self, size: int | None = None) -> None:
        self.parent: list[int] | dict[Any, Any] = list(range(size)) if size is not None else {}

    def find(self, x: Hashable) -> Any:
        parent = self.parent
        if isinstance(parent, dict) and x not in parent:
            parent[x] = x
            return x
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: Hashable, b: Hashable) -> bool:
        """Join a's and b's sets; True when the two are in one set afterwards."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return True

    def nodes(self) -> Iterable[Any]:
        return range(len(self.parent)) if isinstance(self.parent, list) else list(self.parent)

    def groups(self, nodes: Iterable[Any] | None = None, min_size: int = 2) -> list[list[Any]]:
        """The sets (of `nodes`, default every node) with at least `min_size` members, each sorted;
        largest first, then by first member."""
        members: dict[Any, list[Any]] = defaultdict(list)
        for node in self.nodes() if nodes is None else nodes:
            members[self.find(node)].append(node)
        return sorted((sorted(m) for m in members.values() if len(m) >= min_size), key=lambda m: (-len(m), m[0]))


def components(pairs: Iterable[tuple[Any, Any]], size: int | None = None, min_size: int = 2) -> list[list[Any]]:
    """Groups of nodes linked (transitively) by `pairs`; see UnionFind.groups for the order."""
    union = UnionFind(size)
    for a, b in pairs:
        union.union(a, b)
    return union.groups(min_size=min_size)
