"""Near-duplicate clustering: pure functions, vectors + ids + payloads in, groups out. No I/O.

Tiers: `identical` (same photo bytes), `phash` (the same picture re-encoded, resized or
re-compressed: crops whose 64-bit perceptual hashes differ in at most `hash_distance` bits, no
model involved), `duplicate` (cosine >= 0.95 by default) and `similar` (>= 0.85). Groups are connected components of the pair graph at a tier's threshold. Single
linkage can chain (A~B, B~C, A!~C), so every group reports its minimum internal similarity,
and `linkage="complete"` splits components until every pair inside a group clears the
threshold.

Pairs are found exactly by blocked matrix products on L2-normalized vectors (memory bounded by
the block size, never N x N). `scope` keeps all pairs, cross-factory pairs only (who sells the
same shoe) or within-factory pairs only. `level="product"` aggregates crops to products: a
product pair scores its best crop pair.

Review decisions (`Constraints`, content keys from core.duplicates.review) bind every tier, threshold and
linkage: a pair decided `different` never shares a group, pairs decided `same` are grouped
whatever their similarity, and a group whose members are all joined by `same` decisions is
`reviewed`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.domain.options import Level, Linkage, Scope, Tier, check_representative
from core.domain.types import CropPayload
from core.duplicates import photo_hash, review
from core.duplicates.components import UnionFind, components

# Components larger than this keep single linkage (their statistics are still exact).
MAX_COMPLETE_LINKAGE = 4000


# --------------------------------------------------------------------------- pairs


def pair_blocks(vectors: np.ndarray, threshold: float, labels: np.ndarray | None = None,
                scope: Scope = "all", block: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (rows, cols, sims) of every pair i < j with vectors[i] . vectors[j] >= threshold.

    `labels` (one int per row, e.g. a factory index) restricts pairs by `scope`.
    Memory is O(block^2); time is N^2/2 dot products.
    """
    n = len(vectors)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        for col_start in range(start, n, block):
            col_stop = min(n, col_start + block)
            sims = vectors[start:stop] @ vectors[col_start:col_stop].T
            mask = sims >= threshold
            if col_start == start:
                mask &= np.triu(np.ones(mask.shape, dtype=bool), k=1)
            if labels is not None and scope != "all":
                same = labels[start:stop, None] == labels[None, col_start:col_stop]
                mask &= ~same if scope == "cross-factory" else same
            rows, cols = np.nonzero(mask)
            if rows.size:
                yield rows + start, cols + col_start, sims[rows, cols]


def exact_pairs(vectors: np.ndarray, threshold: float, labels: np.ndarray | None = None,
                scope: Scope = "all", block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs at or above `threshold` as three arrays (rows < cols)."""
    parts = list(pair_blocks(vectors, threshold, labels, scope, block))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def connected_components(n: int, rows: np.ndarray, cols: np.ndarray) -> list[list[int]]:
    """Components (size >= 2) of the graph on n nodes with edges (rows[k], cols[k])."""
    return components(zip(rows.tolist(), cols.tolist()), size=n)


def complete_linkage(scores: np.ndarray, threshold: float) -> list[list[int]]:
    """Split nodes (scores = their pairwise similarity matrix) into groups whose every pair
    is >= threshold, by complete-linkage agglomeration. Returns groups of size >= 2."""
    m = len(scores)
    if m < 2:
        return []
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distance = np.clip(1.0 - scores.astype(np.float64), 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="complete")
    labels = fcluster(tree, t=1.0 - threshold + 1e-9, criterion="distance")
    groups: dict[int, list[int]] = defaultdict(list)
    for node, label in enumerate(labels):
        groups[int(label)].append(node)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


# --------------------------------------------------------------------------- groups


@dataclass
class Member:
    point_id: str
    factory: str
    product_id: str
    photo_path: str
    box: list[int] | None
    crop_path: str | None
    similarity: float  # to the group's representative (1.0 for the representative)
    photo_sha256: str = ""  # the photo's content: what review decisions are keyed by
    crop_index: int = 0

    @classmethod
    def of(cls, point_id: str, payload: Mapping[str, Any], similarity: float) -> Member:
        crop = CropPayload.from_payload(payload)
        return cls(point_id, crop.factory, crop.product_id, crop.photo_path, crop.box, crop.crop_path or None,
                   round(float(similarity), 6), crop.photo_sha256, crop.crop_index)


@dataclass
class Group:
    id: str
    tier: Tier
    members: list[Member]  # representative first, then by similarity to it
    min_similarity: float
    mean_similarity: float
    status: str = "new"  # new | unchanged | grown | shrunk | merged | split
    previous_ids: list[str] = field(default_factory=list)
    member_points: list[str] = field(default_factory=list)  # every crop covered (product level: all crops)
    reviewed: bool = False  # every member joined to the others by `same` decisions

    @property
    def representative(self) -> Member:
        return self.members[0]

    @property
    def factories(self) -> list[str]:
        return sorted({m.factory for m in self.members})


@dataclass
class Items:
    """What clustering reads from the store: ids, normalized vectors, payloads."""

    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ClusterSettings:
    duplicate_threshold: float = 0.95
    similar_threshold: float = 0.85
    scope: Scope = Scope.ALL
    level: Level = Level.CROP
    linkage: Linkage = Linkage.SINGLE
    representative: str = "medoid"  # medoid | largest | confidence | factory:NAME
    identical: bool = True
    block: int = 4096
    hash_distance: int | None = 6  # phash tier: at most this many of 64 bits differ (None: no phash tier)

    def __post_init__(self) -> None:
        """Plain strings become the option enums; an unknown value raises ValueError."""
        object.__setattr__(self, "scope", Scope(self.scope))
        object.__setattr__(self, "level", Level(self.level))
        object.__setattr__(self, "linkage", Linkage(self.linkage))
        check_representative(self.representative)


@dataclass(frozen=True)
class Constraints:
    """Review decisions as pairs of content keys (core.duplicates.review): `same` pairs stay in one group at
    any threshold, `different` pairs never share one; `representatives` are crop keys preferred
    as their group's representative."""

    same: tuple[tuple[str, str], ...] = ()
    different: tuple[tuple[str, str], ...] = ()
    representatives: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.same or self.different or self.representatives)


def _nodes(items: Items, level: Level) -> list[list[int]]:
    """Crop indices per node: one crop per node, or all crops of a (factory, product)."""
    if level == "crop":
        return [[i] for i in range(len(items))]
    by_product: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, payload in enumerate(items.payloads):
        crop = CropPayload.from_payload(payload)
        by_product[(crop.factory, crop.product_id)].append(i)
    return list(by_product.values())


def _score_rows(items: Items, nodes: list[list[int]], members: list[int], block: int = 1024):
    """Yield (first row, rows) of the members' pairwise node-score matrix, a block at a time.
    A node pair scores its best crop pair."""
    crops = [c for node in members for c in nodes[node]]
    matrix = items.vectors[crops]
    sizes = [len(nodes[node]) for node in members]
    if all(size == 1 for size in sizes):
        for start in range(0, len(members), block):
            yield start, matrix[start:start + block] @ matrix.T
        return
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for start in range(0, len(members), block):
        rows = []
        for node in members[start:start + block]:
            best_per_crop = (items.vectors[nodes[node]] @ matrix.T).max(axis=0)
            rows.append(np.maximum.reduceat(best_per_crop, starts))
        yield start, np.vstack(rows)


def _node_scores(items: Items, nodes: list[list[int]], members: list[int]) -> np.ndarray:
    """The full pairwise node-score matrix (for groups small enough to hold it)."""
    return np.vstack([rows for _, rows in _score_rows(items, nodes, members)])


def _representative(scores: np.ndarray, members: list[int], nodes: list[list[int]], items: Items, rule: str,
                    preferred: Sequence[int] = ()) -> int:
    """Position (in `members`) of the group's representative, by `rule`:
    medoid = highest mean similarity to the others; largest = most pixels;
    confidence = highest detector confidence; factory:NAME = that factory's medoid first.
    `preferred` positions (a person made them representative) are chosen from first."""
    mean = (scores.sum(axis=1) - np.diag(scores)) / max(1, len(members) - 1)

    def payload(pos: int) -> dict[str, Any]:
        return items.payloads[nodes[members[pos]][0]]

    order = list(preferred) or list(range(len(members)))
    if rule == "largest":
        return max(order, key=lambda p: (int(payload(p).get("width") or 0) * int(payload(p).get("height") or 0), mean[p]))
    if rule == "confidence":
        return max(order, key=lambda p: (float(payload(p).get("detector_confidence") or 0.0), mean[p]))
    if rule.startswith("factory:"):
        wanted = rule.split(":", 1)[1]
        return max(order, key=lambda p: (payload(p).get("factory") == wanted, mean[p]))
    return max(order, key=lambda p: mean[p])


def _stats(scores: np.ndarray) -> tuple[float, float]:
    upper = scores[np.triu_indices(len(scores), k=1)]
    return float(upper.min()), float(upper.mean())


class _ConstrainedUnion(UnionFind):
    """Union-find that refuses a union putting two nodes decided `different` in one set."""

    def __init__(self, n: int, cannot: Mapping[int, set[int]]) -> None:
        super().__init__(n)
        self.forbidden: dict[int, set[int]] = {node: set(others) for node, others in cannot.items()}

    def copy(self) -> _ConstrainedUnion:
        other = _ConstrainedUnion.__new__(_ConstrainedUnion)
        other.parent = list(self.parent)
        other.forbidden = dict(self.forbidden)  # sets are replaced on union, never changed in place
        return other

    def union(self, a: int, b: int) -> bool:
        """Join unless that puts a `different` pair in one set; True when a and b end up together."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        fa, fb = self.forbidden.get(ra), self.forbidden.get(rb)
        if fa or fb:
            small, other_root = (fa, rb) if fa and (not fb or len(fa) <= len(fb)) else (fb, ra)
            if any(self.find(x) == other_root for x in small):
                return False
        root, child = min(ra, rb), max(ra, rb)
        self.parent[child] = root
        if fa or fb:
            self.forbidden[root] = (fa or set()) | (fb or set())
            self.forbidden.pop(child, None)
        return True


class _Decided:
    """Review decisions resolved to one run's nodes (crops or products).

    `same` reaches a node through its link keys (crop and photo; product too at product level),
    `different` through its part keys (crop, photo, product). A `same` pair that would join two
    nodes decided `different` (directly or through other `same` pairs) is ignored: a rejection
    always wins."""

    def __init__(self, items: Items, nodes: list[list[int]], level: Level, constraints: Constraints,
                 node_labels: np.ndarray, scope: Scope) -> None:
        self.link_keys: list[set[str]] = []
        part: list[set[str]] = []
        for crops in nodes:
            links, parts = set(), set()
            for c in crops:
                links |= review.link_keys(items.payloads[c])
                parts |= review.part_keys(items.payloads[c])
            if level == "product":
                links |= {k for k in parts if review.key_kind(k) == "product"}
            self.link_keys.append(links)
            part.append(parts)
        link_nodes, part_nodes = _key_index(self.link_keys), _key_index(part)
        self.cannot: dict[int, set[int]] = defaultdict(set)
        for a, b in constraints.different:
            for u in part_nodes.get(a, ()):
                for v in part_nodes.get(b, ()):
                    if u != v:
                        self.cannot[u].add(v)
                        self.cannot[v].add(u)
        self.cannot = dict(self.cannot)
        must_pairs = set()
        for a, b in constraints.same:
            for u in link_nodes.get(a, ()):
                for v in link_nodes.get(b, ()):
                    if u != v and v not in self.cannot.get(u, ()):
                        must_pairs.add((min(u, v), max(u, v)))
        if scope != "all":  # the scope decides which pairs count, decided ones too
            must_pairs = {(u, v) for u, v in must_pairs
                          if (node_labels[u] == node_labels[v]) == (scope == "within-factory")}
        self.must = _ConstrainedUnion(len(nodes), self.cannot)
        self.linked_nodes: set[int] = set()
        for u, v in sorted(must_pairs):
            if self.must.union(u, v):
                self.linked_nodes.update((u, v))
        self.same_index: dict[str, set[str]] = defaultdict(set)
        for a, b in constraints.same:
            self.same_index[a].add(b)
            self.same_index[b].add(a)
        self.preferred = {n for n, crops in enumerate(nodes) if any(
            review.payload_keys(items.payloads[c])[0] in constraints.representatives for c in crops)}

    def components(self, rows: np.ndarray, cols: np.ndarray, scores: np.ndarray) -> list[list[int]]:
        """Groups of the tier's pair graph plus the `same` pairs, joined best pair first and
        never across a `different` decision (single linkage under constraints)."""
        union = self.must.copy()
        touched = set(self.linked_nodes)
        for k in np.argsort(-scores, kind="stable").tolist():
            a, b = int(rows[k]), int(cols[k])
            union.union(a, b)
            touched.update((a, b))
        return union.groups(touched)

    def reviewed(self, members: Sequence[int]) -> bool:
        return review.connected([self.link_keys[m] for m in members], self.same_index)


def _key_index(key_sets: Sequence[set[str]]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = defaultdict(list)
    for node, keys in enumerate(key_sets):
        for key in keys:
            index[key].append(node)
    return index


def build_groups(items: Items, nodes: list[list[int]], components: list[list[int]], tier: Tier, threshold: float,
                 linkage: Linkage, rule: str, decided: _Decided | None = None, scope: Scope = "all",
                 node_labels: np.ndarray | None = None) -> list[Group]:
    """Turn node components into Groups: optional complete-linkage split, representative,
    similarity to it, min/mean internal similarity, reviewed or not.

    With scope cross-factory, complete linkage judges cross-factory pairs only (as the pair
    graph does) and pieces holding a single factory are dropped."""
    groups = []
    cross = scope == "cross-factory" and node_labels is not None
    for component in components:
        if len(component) > MAX_COMPLETE_LINKAGE:
            groups.append(_large_group(items, nodes, component, tier))
            if decided is not None:
                groups[-1].reviewed = decided.reviewed(component)
            continue
        scores = _node_scores(items, nodes, component)
        if linkage == "complete":
            parts = complete_linkage(_linkage_scores(scores, component, threshold, node_labels if cross else None,
                                                     decided), threshold)
        else:
            parts = [list(range(len(component)))]
        for part in parts:
            members = [component[p] for p in part]
            if cross and len({int(node_labels[m]) for m in members}) < 2:
                continue
            sub = scores[np.ix_(part, part)]
            preferred = [k for k, m in enumerate(members) if decided is not None and m in decided.preferred]
            rep = _representative(sub, members, nodes, items, rule, preferred)
            low, mean = _stats(sub)
            group = _group(items, nodes, members, rep, sub[rep], tier, low, mean)
            if decided is not None:
                group.reviewed = decided.reviewed(members)
            groups.append(group)
    return sorted(groups, key=lambda g: (-len(g.members), g.id))


def _linkage_scores(scores: np.ndarray, component: list[int], threshold: float, node_labels: np.ndarray | None,
                    decided: _Decided | None) -> np.ndarray:
    """The similarities complete linkage works on: with `node_labels` (cross-factory scope)
    same-factory pairs sit exactly at the threshold, so they neither block a merge nor drive one
    ahead of a real cross-factory pair; pairs decided different are -1 (never together) and
    members of one `same` component are 1 (always together)."""
    linked = scores.astype(np.float64)
    if node_labels is not None:
        labels = node_labels[component]
        linked[labels[:, None] == labels[None, :]] = threshold
    if decided is not None:
        position = {node: k for k, node in enumerate(component)}
        by_root: dict[int, list[int]] = defaultdict(list)
        for node in component:
            if node in decided.linked_nodes:
                by_root[decided.must.find(node)].append(position[node])
        for together in by_root.values():
            if len(together) > 1:
                linked[np.ix_(together, together)] = 1.0
        for node in component:
            for other in decided.cannot.get(node, ()):
                if other in position:
                    linked[position[node], position[other]] = linked[position[other], position[node]] = -1.0
    np.fill_diagonal(linked, 1.0)
    return linked


def _group(items: Items, nodes: list[list[int]], members: list[int], rep: int, to_rep: np.ndarray,
           tier: Tier, low: float, mean: float) -> Group:
    """A Group: members ordered representative first, then by similarity to it."""
    rep_vectors = items.vectors[nodes[members[rep]]]
    order = sorted(range(len(members)), key=lambda p: (p != rep, -to_rep[p]))
    group_members = []
    for pos in order:
        node = nodes[members[pos]]
        # A product shows the crop that best matches the representative.
        best = node[int((items.vectors[node] @ rep_vectors.T).max(axis=1).argmax())] if len(node) > 1 else node[0]
        group_members.append(Member.of(items.ids[best], items.payloads[best], 1.0 if pos == rep else to_rep[pos]))
    covered = sorted(items.ids[c] for m in members for c in nodes[m])
    return Group(_content_id(tier, covered), tier, group_members, round(low, 6), round(mean, 6), member_points=covered)


def _large_group(items: Items, nodes: list[list[int]], members: list[int], tier: Tier) -> Group:
    """A component too large for a full score matrix (a chain, usually): exact statistics in
    row blocks, the medoid as representative, single linkage kept."""
    m = len(members)
    low, total = np.inf, 0.0
    means = np.zeros(m)
    for start, rows in _score_rows(items, nodes, members):
        for k in range(len(rows)):
            rows[k, start + k] = np.nan  # the diagonal
        low = min(low, float(np.nanmin(rows)))
        total += float(np.nansum(rows))
        means[start:start + len(rows)] = np.nansum(rows, axis=1) / (m - 1)
    rep = int(np.argmax(means))
    to_rep = next(rows for start, rows in _score_rows(items, nodes, [members[rep]]))[0]
    return _group(items, nodes, members, rep, np.asarray(to_rep), tier, low, total / (m * (m - 1)))


def _best_per_key(keys: list[np.ndarray], values: list[np.ndarray], n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Node pairs (encoded a * n + b) -> unique pairs with their best score."""
    if not keys or not sum(len(k) for k in keys):
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    key = np.concatenate(keys)
    value = np.concatenate(values)
    order = np.lexsort((-value, key))  # by key, best score first
    key, value = key[order], value[order]
    first = np.concatenate([[True], key[1:] != key[:-1]])
    key, value = key[first], value[first]
    return np.stack([key // n_nodes, key % n_nodes], axis=1), value


def _content_id(tier: Tier, point_ids: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(point_ids)).encode()).hexdigest()[:10]
    return f"{Tier(tier).prefix}-{digest}"


def identical_groups(items: Items, scope: Scope) -> list[Group]:
    """Points cut from byte-identical photos (same sha256 and crop index) in different places."""
    by_bytes: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for i, payload in enumerate(items.payloads):
        if payload.get("photo_sha256"):
            by_bytes[(payload["photo_sha256"], payload.get("crop_index"))].append(i)
    groups = []
    for members in by_bytes.values():
        factories = [items.payloads[i].get("factory") for i in members]
        if len(members) < 2:
            continue
        if scope == "cross-factory" and len(set(factories)) < 2:
            continue
        if scope == "within-factory" and len(set(factories)) == len(factories):
            continue
        ids = sorted(items.ids[i] for i in members)
        group_members = [Member.of(items.ids[i], items.payloads[i], 1.0) for i in sorted(members, key=lambda i: items.ids[i])]
        # The same bytes are the same shoe: nothing for a person to decide.
        groups.append(Group(_content_id(Tier.IDENTICAL, ids), Tier.IDENTICAL, group_members, 1.0, 1.0, member_points=ids,
                            reviewed=True))
    return sorted(groups, key=lambda g: (-len(g.members), g.id))


def hash_groups(items: Items, settings: ClusterSettings, labels: np.ndarray, nodes: list[list[int]],
                node_of: np.ndarray, decided: _Decided) -> list[Group]:
    """Crops whose perceptual hashes (payload `crop_phash`) are within `settings.hash_distance`
    bits, joined nearest first (single linkage), never across a `different` decision; at product
    level their products are joined. Groups of byte-identical copies only are left to the
    identical tier. Min/mean similarity are cosines."""
    values = [photo_hash.as_int(p.get(photo_hash.PAYLOAD_KEY)) for p in items.payloads]
    have = np.array([i for i, v in enumerate(values) if v is not None], dtype=np.int64)
    if len(have) < 2:
        return []
    hashes = np.array([values[i] for i in have], dtype=np.uint64)
    r, c, distance = photo_hash.near_pairs(hashes, int(settings.hash_distance))
    rows, cols = have[r], have[c]
    if settings.scope != "all":
        same = labels[rows] == labels[cols]
        keep = ~same if settings.scope == "cross-factory" else same
        rows, cols, distance = rows[keep], cols[keep], distance[keep]
    a, b = node_of[rows], node_of[cols]
    keep = a != b  # crops of one product do not pair with each other
    a, b, distance = a[keep], b[keep], distance[keep]
    union = _ConstrainedUnion(len(nodes), decided.cannot)  # confirmations do not make a copy of a photo
    for k in np.argsort(distance, kind="stable").tolist():
        union.union(int(a[k]), int(b[k]))
    components = union.groups(set(a.tolist()) | set(b.tolist()))
    node_labels = labels[[crops[0] for crops in nodes]]
    groups = build_groups(items, nodes, components, Tier.PHASH, -1.0, Linkage.SINGLE, settings.representative, decided,
                          settings.scope, node_labels)
    return [g for g in groups if len({review.crop_key(m.photo_sha256, m.crop_index) for m in g.members}) > 1]


def cluster(items: Items, settings: ClusterSettings = ClusterSettings(),
            progress: Callable[[float], None] | None = None,
            candidates: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
            constraints: Constraints = Constraints()) -> list[Group]:
    """Every group of every tier for `items`, largest first within a tier.

    Pairs come from the exact blocked search, or from `candidates` (rows, cols, exact sims),
    e.g. nearest neighbours from the store's index for very large catalogues. `constraints`
    (review decisions) bind every tier: see the module's docstring.
    """
    if len(items) < 2:
        return []
    nodes = _nodes(items, settings.level)
    node_of = np.empty(len(items), dtype=np.int64)
    for n, crops in enumerate(nodes):
        node_of[crops] = n
    names = [CropPayload.from_payload(p).factory for p in items.payloads]
    index = {name: k for k, name in enumerate(sorted(set(names)))}
    labels = np.array([index[name] for name in names])

    low = min(settings.duplicate_threshold, settings.similar_threshold)
    blocks_per_side = -(-len(items) // settings.block)
    total_blocks = blocks_per_side * (blocks_per_side + 1) // 2
    keys, values = [], []
    if candidates is not None:
        rows, cols, sims = candidates
        keep = sims >= low
        if settings.scope != "all":
            same = labels[rows] == labels[cols]
            keep &= ~same if settings.scope == "cross-factory" else same
        blocks = iter([(rows[keep], cols[keep], sims[keep])])
    else:
        blocks = pair_blocks(items.vectors, low, labels, settings.scope, settings.block)
    for done, (rows, cols, sims) in enumerate(blocks, 1):
        a, b = node_of[rows], node_of[cols]
        keep = a != b  # crops of one product do not pair with each other
        keys.append(np.minimum(a, b)[keep] * len(nodes) + np.maximum(a, b)[keep])
        values.append(sims[keep])
        if progress:
            progress(min(1.0, done / total_blocks))
    pairs, scores = _best_per_key(keys, values, len(nodes))

    node_labels = labels[[crops[0] for crops in nodes]]
    decided = _Decided(items, nodes, settings.level, constraints, node_labels, settings.scope)
    constrained = bool(constraints.same or constraints.different)
    groups: list[Group] = []
    if settings.identical:
        groups += identical_groups(items, settings.scope)
    if settings.hash_distance is not None:
        groups += hash_groups(items, settings, labels, nodes, node_of, decided)
    for tier, threshold in ((Tier.DUPLICATE, settings.duplicate_threshold), (Tier.SIMILAR, settings.similar_threshold)):
        keep = scores >= threshold
        if constrained:
            components = decided.components(pairs[keep, 0], pairs[keep, 1], scores[keep])
        else:
            components = connected_components(len(nodes), pairs[keep, 0], pairs[keep, 1])
        groups += build_groups(items, nodes, components, tier, threshold, settings.linkage, settings.representative,
                               decided, settings.scope, node_labels)
    return groups


# --------------------------------------------------------------------------- stable ids


def assign_stable_ids(groups: list[Group], previous: Mapping[str, Sequence[str]]) -> list[str]:
    """Give `groups` the ids of the previous run where their members carry on.

    `previous` maps last run's group id -> its member point ids (same tier prefix only).
    A group keeps an old id when it is that group unchanged, grown or shrunk; the biggest
    piece of a split and the biggest contributor of a merge keep theirs too. Sets each
    group's `status` and `previous_ids`; returns old ids that no longer exist (dissolved).
    """
    def tier_of(group_id: str) -> str:
        return group_id.split("-", 1)[0]

    owner: dict[tuple[str, str], str] = {}  # (tier prefix, point) -> old group: one group per tier
    for old_id, members in previous.items():
        for point in members:
            owner[(tier_of(old_id), point)] = old_id
    old_sets = {old_id: set(members) for old_id, members in previous.items()}
    pieces: dict[str, int] = defaultdict(int)  # old id -> number of new groups it feeds (same tier)
    overlaps_of: list[dict[str, int]] = []
    for group in groups:
        overlap: dict[str, int] = defaultdict(int)
        for point in group.member_points:
            old_id = owner.get((tier_of(group.id), point))
            if old_id:
                overlap[old_id] += 1
        overlaps_of.append(overlap)
        for old_id in overlap:
            pieces[old_id] += 1
    claimed: set[str] = set()
    order = sorted(range(len(groups)), key=lambda k: -len(groups[k].member_points))
    for k in order:
        group, overlap = groups[k], overlaps_of[k]
        if not overlap:
            group.status = "new"
            continue
        ranked = sorted(overlap, key=lambda old_id: (-overlap[old_id], old_id))
        group.previous_ids = ranked
        keep = next((old_id for old_id in ranked if old_id not in claimed), None)
        members = set(group.member_points)
        if len(ranked) > 1:
            group.status = "merged"
        elif pieces[ranked[0]] > 1:
            group.status = "split"
        elif members == old_sets[ranked[0]]:
            group.status = "unchanged"
        elif members > old_sets[ranked[0]]:
            group.status = "grown"
        elif members < old_sets[ranked[0]]:
            group.status = "shrunk"
        else:
            group.status = "changed"  # lost some members and gained others
        if keep is not None:
            claimed.add(keep)
            group.id = keep
    return sorted(set(previous) - claimed)


# --------------------------------------------------------------------------- summaries


def overlap_matrix(groups: Sequence[Group], factories: Sequence[str]) -> list[list[int]]:
    """matrix[a][b] = how many groups hold both factory a and factory b (diagonal: groups with a)."""
    index = {name: i for i, name in enumerate(factories)}
    matrix = np.zeros((len(factories), len(factories)), dtype=np.int64)
    for group in groups:
        present = sorted({index[f] for f in group.factories if f in index})
        for a in present:
            for b in present:
                matrix[a, b] += 1
    return matrix.tolist()


def calibrate(scores: Sequence[float], same: Sequence[bool], thresholds: Sequence[float] | None = None,
              target_precision: float = 0.95) -> dict[str, Any]:
    """Precision / recall / F1 of `score >= t` against labels, per threshold, and the lowest
    threshold whose precision reaches `target_precision` (the most recall at that precision)."""
    scores_arr = np.asarray(scores, dtype=np.float64)
    same_arr = np.asarray(same, dtype=bool)
    if thresholds is None:
        thresholds = [round(t, 3) for t in np.arange(0.50, 1.0001, 0.01)]
    rows = []
    positives = int(same_arr.sum())
    for t in thresholds:
        predicted = scores_arr >= t
        tp = int((predicted & same_arr).sum())
        fp = int((predicted & ~same_arr).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / positives if positives else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"threshold": float(t), "precision": round(precision, 4), "recall": round(recall, 4),
                     "f1": round(f1, 4), "tp": tp, "fp": fp, "fn": positives - tp})
    meeting = [r for r in rows if r["precision"] >= target_precision and r["tp"] > 0]
    chosen = min(meeting, key=lambda r: r["threshold"]) if meeting else None
    best_f1 = max(rows, key=lambda r: (r["f1"], r["threshold"])) if rows else None
    return {"pairs": len(scores_arr), "positives": positives, "target_precision": target_precision,
            "threshold_for_target": chosen["threshold"] if chosen else None,
            "best_f1": best_f1, "curve": rows}
