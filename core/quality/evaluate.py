"""`ingest eval`: how well the index (or another model) finds a catalogue's own products.

Reads crops from the store; nothing is written to it. On the embedded store the rankings are
computed here, exactly, from every vector in memory (`evaluate_vectors`); against a server
(`evaluate_store`) each query's top crops come from the server's own index through batched
queries (`Store.query_batch`), and only ids and labels are held here (memory O(n), no n x n). Model A/B embeds the same sample of
crops (cut from the photos by their stored boxes) with each model in memory.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.domain.types import CropPayload
from core.duplicates.groups import Items
from core.duplicates.service import QUERY_BATCH, load_items
from core.errors import BadImage, EmptyIndex, ShoeSearchError
from core.quality.metrics import Evaluation, leave_one_out, query_metrics, summarize, text_queries
from core.store.base import Store, Where
from core.vision.embedder import Embedder
from core.vision.images import load_photo


def item_labels(items: Items) -> tuple[list[str], list[str], list[str]]:
    """Per crop: its product ('factory/product_id'), its photo ('factory/sha256') and its factory
    (what evaluation and `ingest tune` score relevance by)."""
    crops = [CropPayload.from_payload(p) for p in items.payloads]
    return [c.product for c in crops], [c.photo for c in crops], [c.factory for c in crops]


def read_queries(path: Path) -> list[tuple[str, str, str | None]]:
    """queries.csv: text,product_id[,factory] -> [(text, product_id, factory or None)]."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip() for c in reader.fieldnames or []}
        if not {"text", "product_id"} <= columns:
            raise ShoeSearchError(f"{path}: line 1: need columns text,product_id[,factory]")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            text, product = (row.get("text") or "").strip(), (row.get("product_id") or "").strip()
            if not text or not product:
                raise ShoeSearchError(f"{path}: line {line_no}: empty text or product_id")
            rows.append((text, product, (row.get("factory") or "").strip() or None))
    return rows


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """pairs.csv: a,b[,same] of photo paths (relative to the file or absolute); rows with
    same = 0/false are ignored. Returns the (a, b) paths that show the same shoe."""
    pairs = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"a", "b"} <= {c.strip() for c in reader.fieldnames or []}:
            raise ShoeSearchError(f"{path}: line 1: need columns a,b[,same]")
        for line_no, row in enumerate(reader, start=2):
            if str(row.get("same", "1")).strip().lower() in {"0", "false", "no", "n"}:
                continue
            a, b = (row.get("a") or "").strip(), (row.get("b") or "").strip()
            if not a or not b:
                raise ShoeSearchError(f"{path}: line {line_no}: empty a or b")
            pairs.append(tuple(str(Path(v) if Path(v).is_absolute() else (path.parent / v).absolute()) for v in (a, b)))
    return pairs


def labels_from_pairs(items: Items, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Relevance labels from user pairs: photos linked (transitively) share a label; every other
    crop gets a label of its own (a distractor, never a query)."""
    from core.duplicates.components import UnionFind

    linked = UnionFind()
    for a, b in pairs:
        linked.union(a, b)
    return [f"pair:{linked.find(p['photo_path'])}" if p.get("photo_path") in linked.parent else f"own:{pid}"
            for pid, p in zip(items.ids, items.payloads)]


def evaluate_vectors(items: Items, embedder: Embedder | None = None,
                     queries: Sequence[tuple[str, str, str | None]] = (),
                     pairs: Sequence[tuple[str, str]] = ()) -> dict[str, Evaluation]:
    """Leave-one-out photo retrieval on `items` (relevance: same product, or linked by `pairs`),
    and text queries if any (needs `embedder`)."""
    products, photos, factories = item_labels(items)
    if pairs:
        products = labels_from_pairs(items, pairs)
    out = {"photo": leave_one_out(items.vectors, products, photos, factories)}
    if queries:
        if embedder is None:
            raise ShoeSearchError("text queries need the CLIP model")
        vectors = embedder.embed_texts([q[0] for q in queries])
        with_factory = any(q[2] for q in queries)
        labels = item_labels(items)[0] if with_factory else [CropPayload.from_payload(p).product_id for p in items.payloads]
        wanted = [f"{q[2]}/{q[1]}" if with_factory else q[1] for q in queries]
        out["text"] = text_queries(vectors, wanted, items.vectors, labels, [q[2] or "all" for q in queries])
    return out


def sample_items(items: Items, limit: int, seed: int = 0) -> Items:
    """Up to `limit` crops, whole products at a time (products with >= 2 photos first)."""
    by_product: dict[str, list[int]] = {}
    products, photos, _ = item_labels(items)
    for i, product in enumerate(products):
        by_product.setdefault(product, []).append(i)
    useful = [ids for ids in by_product.values() if len({photos[i] for i in ids}) > 1]
    random.Random(seed).shuffle(useful)
    chosen: list[int] = []
    for ids in useful:
        if len(chosen) + len(ids) > limit and chosen:
            break
        chosen += ids
    chosen.sort()
    return Items([items.ids[i] for i in chosen], items.vectors[chosen], [items.payloads[i] for i in chosen])


def crops_of(items: Items, max_pixels: int) -> tuple[list, list[int]]:
    """The crop images of `items` (photo cut by its stored box); unreadable photos are skipped."""
    images, kept = [], []
    for i, payload in enumerate(items.payloads):
        try:
            photo = load_photo(Path(payload["photo_path"]), max_pixels)
        except (BadImage, OSError, KeyError):
            continue
        box = payload.get("box")
        images.append(photo.crop(tuple(box)) if box else photo)
        kept.append(i)
    return images, kept


def compare_models(store: Store, models: Sequence[str], make_embedder: Callable[[str], Embedder],
                   sample: int = 500, queries: Sequence[tuple[str, str, str | None]] = (),
                   max_pixels: int = 80_000_000, removers: Sequence = (None,)) -> dict[str, Any]:
    """Embed the same sample of crops with each model (and each background treatment: None =
    crops as they are) and evaluate each variant, in memory. The stored vectors are not read
    (the sample is embedded again): only ids and payloads, scrolled in pages."""
    items = load_items(store, with_vectors=False)
    if len(items) == 0:
        raise EmptyIndex(f"Nothing indexed in {store.location} to evaluate.")
    chosen = sample_items(items, sample)
    images, kept = crops_of(chosen, max_pixels)
    if not kept:
        raise ShoeSearchError("None of the sampled photos can be read any more (moved or deleted?).")
    payloads = [chosen.payloads[i] for i in kept]
    ids = [chosen.ids[i] for i in kept]
    results: dict[str, Any] = {"sample_crops": len(kept), "models": {}}
    for remover in removers:
        treated = remover.remove(images) if remover is not None else images
        for name in models:
            label = name if remover is None else f"{name} + {remover.name}"
            embedder = make_embedder(name)
            vectors = embedder.embed_images(treated)
            evaluation = evaluate_vectors(Items(ids, vectors, payloads), embedder, queries)
            results["models"][label] = {kind: e.to_dict() for kind, e in evaluation.items()}
            results["models"][label]["_evaluations"] = evaluation
    return results


def labels_from_links(items: Items, links: Mapping[str, Sequence[str]]) -> list[str]:
    """Relevance labels from products linked across factories (`core.duplicates.review.linked_products`):
    crops of linked products share their group's label, every other crop keeps its product's."""
    products = item_labels(items)[0]
    return [f"linked:{links[p][0]}" if p in links else p for p in products]


def _check_links_present(labels: Sequence[str], products: Sequence[str], links: Mapping[str, Sequence[str]]) -> None:
    present: dict[str, set[str]] = {}
    for label, product in zip(labels, products):
        if product in links:
            present.setdefault(label, set()).add(product)
    if not any(len(found) > 1 for found in present.values()):
        raise ShoeSearchError(f"no two of the {len(links)} linked products are among the evaluated crops "
                              f"(a --factory filter leaving out the factories they are linked to?)")


def evaluate_links(items: Items, links: Mapping[str, Sequence[str]]) -> dict[str, Evaluation]:
    """Leave-one-out photo retrieval with the product links as relevance:

    - `photo`: a crop's relevant set is its own product's other photos plus every crop of the
      products linked to it (in other factories);
    - `cross_factory`: queries are crops of linked products, relevant are the crops of the
      *other* products of the link group; the query's own product is left out of the ranking
      (neither relevant nor counted), so this measures finding the same shoe sold elsewhere.

    Raises ShoeSearchError when no two products of one link group are among the evaluated crops."""
    products, photos, factories = item_labels(items)
    labels = labels_from_links(items, links)
    _check_links_present(labels, products, links)
    return {"photo": leave_one_out(items.vectors, labels, photos, factories),
            "cross_factory": leave_one_out(items.vectors, labels, products, factories)}


# The payload keys evaluation reads (labels: product, photo, factory; pairs: photo path).
EVAL_KEYS = ("factory", "product_id", "photo_path", "photo_sha256")


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def ranked_leave_one_out(store: Store, ids: Sequence[str], products: Sequence[str], photos: Sequence[str],
                         groups: Sequence[str], where: Where | None = None, depth: int = 100,
                         batch: int | None = None) -> Evaluation:
    """`leave_one_out` with the store ranking: the same queries, relevance and metrics, but each
    query's top `depth` crops (after its own photo's are dropped) come from the store's index,
    `batch` queries per request; the query vectors are fetched by id a batch at a time.
    `where`: the filter `ids` were read with (the rankings see the same crops)."""
    batch = batch or QUERY_BATCH
    index = {pid: i for i, pid in enumerate(ids)}
    label_count = Counter(products)
    label_photo_count = Counter(zip(products, photos))
    photo_count = Counter(photos)
    queries = [i for i in range(len(ids)) if label_count[products[i]] > label_photo_count[(products[i], photos[i])]]
    per_query: list[tuple[str, dict[str, float]]] = []
    for start in range(0, len(queries), batch):
        chunk = queries[start:start + batch]
        fetched = {p.id: p.vector for p in store.retrieve([ids[q] for q in chunk], with_vectors=True)
                   if p.vector is not None}
        chunk = [q for q in chunk if ids[q] in fetched]
        if not chunk:
            continue
        vectors = _unit(np.stack([fetched[ids[q]] for q in chunk]))
        limit = depth + max(photo_count[photos[q]] for q in chunk)  # room for the hits of the query's own photo
        found = store.query_batch(vectors, where=where, limit=limit, with_payload=False)
        for q, hits in zip(chunk, found):
            ranked = [j for j in (index.get(h.point_id) for h in hits) if j is not None and photos[j] != photos[q]]
            relevant = [products[j] == products[q] for j in ranked[:depth]]
            n_relevant = label_count[products[q]] - label_photo_count[(products[q], photos[q])]
            per_query.append((str(groups[q]), query_metrics(relevant, n_relevant)))
    return summarize(per_query)


def ranked_text_queries(store: Store, query_vectors: np.ndarray, wanted: Sequence[str], ids: Sequence[str],
                        products: Sequence[str], groups: Sequence[str] | None = None, where: Where | None = None,
                        depth: int = 100, batch: int | None = None) -> Evaluation:
    """`text_queries` with the store ranking each text vector's top `depth` crops."""
    batch = batch or QUERY_BATCH
    index = {pid: i for i, pid in enumerate(ids)}
    label_count = Counter(products)
    per_query = []
    for start in range(0, len(wanted), batch):
        stop = min(len(wanted), start + batch)
        found = store.query_batch(_unit(query_vectors[start:stop]), where=where, limit=depth, with_payload=False)
        for i, hits in zip(range(start, stop), found):
            if not label_count[wanted[i]]:
                continue
            ranked = [j for j in (index.get(h.point_id) for h in hits) if j is not None]
            group = str(groups[i]) if groups is not None else "text"
            per_query.append((group, query_metrics([products[j] == wanted[i] for j in ranked], label_count[wanted[i]])))
    return summarize(per_query)


def evaluate_store(store: Store, factories: Sequence[str] | None = None, embedder: Embedder | None = None,
                   queries: Sequence[tuple[str, str, str | None]] = (), pairs: Sequence[tuple[str, str]] = (),
                   links: Mapping[str, Sequence[str]] | None = None) -> tuple[int, dict[str, Evaluation]]:
    """`evaluate_vectors` (and with `links`, `evaluate_links`) on the crops of `factories` (None:
    all), ranked by the store (a server's index) instead of in memory: only ids and the
    EVAL_KEYS payload are read here. Returns (crops evaluated, evaluations)."""
    items = load_items(store, factories, keys=EVAL_KEYS, with_vectors=False)
    if len(items) == 0:
        raise EmptyIndex(f"Nothing indexed in {store.location} to evaluate.")
    where = {"factory": list(factories)} if factories else None
    products, photos, factories_of = item_labels(items)
    labels = labels_from_pairs(items, pairs) if pairs else products
    if links:
        labels = labels_from_links(items, links)
        _check_links_present(labels, products, links)
    out = {"photo": ranked_leave_one_out(store, items.ids, labels, photos, factories_of, where)}
    if queries:
        if embedder is None:
            raise ShoeSearchError("text queries need the CLIP model")
        vectors = embedder.embed_texts([q[0] for q in queries])
        with_factory = any(q[2] for q in queries)
        text_labels = products if with_factory else [CropPayload.from_payload(p).product_id for p in items.payloads]
        wanted = [f"{q[2]}/{q[1]}" if with_factory else q[1] for q in queries]
        out["text"] = ranked_text_queries(store, np.asarray(vectors), wanted, items.ids, text_labels,
                                          [q[2] or "all" for q in queries], where)
    if links:  # as evaluate_links: the query's own product left out of its ranking
        out["cross_factory"] = ranked_leave_one_out(store, items.ids, labels, products, factories_of, where)
    return len(items), out
