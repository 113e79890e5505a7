"""Retrieval evaluation: pure functions over rankings and vectors. No I/O.

Labels come from the catalogue itself: crops of the same (factory, product) are relevant to
each other. Every crop whose product has other photos is a query against all the rest
(leave-one-out); crops cut from the query's own photo are neither relevant nor counted (a
pair of shoes in one photo would make retrieval look easier than it is).

Metrics (binary relevance, ranks from 1):
- precision@k = relevant in the top k / k
- recall@k    = relevant in the top k / all relevant
- AP          = mean over the relevant items of precision at their rank (0 for missed ones),
                mAP = mean AP over queries
- nDCG@10     = DCG@10 / ideal DCG@10, DCG = sum over relevant hits of 1 / log2(rank + 1)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KS = (1, 5, 10)


def precision_at_k(relevant: Sequence[bool], k: int) -> float:
    return sum(relevant[:k]) / k


def recall_at_k(relevant: Sequence[bool], n_relevant: int, k: int) -> float:
    return sum(relevant[:k]) / n_relevant if n_relevant else 0.0


def average_precision(relevant: Sequence[bool], n_relevant: int) -> float:
    """AP of a ranking (`relevant[i]`: is the item at rank i+1 relevant) with `n_relevant` in all."""
    if not n_relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, is_relevant in enumerate(relevant, start=1):
        if is_relevant:
            hits += 1
            total += hits / rank
    return total / n_relevant


def ndcg_at_k(relevant: Sequence[bool], n_relevant: int, k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(rank + 1) for rank, r in enumerate(relevant[:k], start=1) if r)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, n_relevant) + 1))
    return dcg / ideal if ideal else 0.0


def query_metrics(relevant: Sequence[bool], n_relevant: int) -> dict[str, float]:
    out = {}
    for k in KS:
        out[f"P@{k}"] = precision_at_k(relevant, k)
        out[f"R@{k}"] = recall_at_k(relevant, n_relevant, k)
    out["AP"] = average_precision(relevant, n_relevant)
    out["nDCG@10"] = ndcg_at_k(relevant, n_relevant, 10)
    return out


@dataclass
class Evaluation:
    """Mean metrics overall and per group (factory), with how many queries each."""

    overall: dict[str, float]
    groups: dict[str, dict[str, float]]
    queries: int
    group_queries: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "overall": self.overall,
                "per_factory": {g: {"queries": self.group_queries[g], **m} for g, m in self.groups.items()}}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    renamed = {"AP": "mAP"}
    return {renamed.get(k, k): round(float(np.mean([r[k] for r in rows])), 4) for k in keys}


def summarize(per_query: list[tuple[str, dict[str, float]]]) -> Evaluation:
    """(group, metrics) per query -> means overall and per group."""
    if not per_query:
        return Evaluation({}, {}, 0)
    by_group: dict[str, list[dict[str, float]]] = defaultdict(list)
    for group, metrics in per_query:
        by_group[group].append(metrics)
    return Evaluation(_mean([m for _, m in per_query]), {g: _mean(rows) for g, rows in sorted(by_group.items())},
                      len(per_query), {g: len(rows) for g, rows in sorted(by_group.items())})


def leave_one_out(vectors: np.ndarray, products: Sequence[str], photos: Sequence[str], groups: Sequence[str],
                  depth: int = 100, block: int = 1024) -> Evaluation:
    """Every item whose product has other photos queries all other items (exact cosine).

    `products`: relevance label per item (e.g. "factory/product"); `photos`: items of the same
    photo are skipped for that query; `groups`: how results are broken down (e.g. factory).
    """
    products = np.asarray(products)
    photos = np.asarray(photos)
    n = len(vectors)
    per_query: list[tuple[str, dict[str, float]]] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = vectors[start:stop] @ vectors.T
        for row, q in enumerate(range(start, stop)):
            eligible = photos != photos[q]
            relevant_mask = (products == products[q]) & eligible
            n_relevant = int(relevant_mask.sum())
            if not n_relevant:
                continue
            scores = np.where(eligible, sims[row], -np.inf)
            top = min(depth, int(eligible.sum()))
            order = np.argpartition(-scores, top - 1)[:top]
            order = order[np.argsort(-scores[order], kind="stable")]
            per_query.append((str(groups[q]), query_metrics(relevant_mask[order].tolist(), n_relevant)))
    return summarize(per_query)


def text_queries(query_vectors: np.ndarray, wanted: Sequence[str], vectors: np.ndarray, products: Sequence[str],
                 groups: Sequence[str] | None = None, depth: int = 100) -> Evaluation:
    """Each text query (vector) against every item; relevant = items whose label is `wanted[i]`."""
    products = np.asarray(products)
    per_query = []
    sims = query_vectors @ vectors.T
    for i, label in enumerate(wanted):
        relevant_mask = products == label
        n_relevant = int(relevant_mask.sum())
        if not n_relevant:
            continue
        top = min(depth, len(products))
        order = np.argsort(-sims[i], kind="stable")[:top]
        group = str(groups[i]) if groups is not None else "text"
        per_query.append((group, query_metrics(relevant_mask[order].tolist(), n_relevant)))
    return summarize(per_query)


def markdown(evaluation: Evaluation, title: str) -> str:
    """A markdown table: overall first, then each factory."""
    if not evaluation.queries:
        return (f"### {title}\n\nNo query had a relevant item among the evaluated crops (a photo query needs "
                f"another photo of its product; a text query needs its product).\n")
    keys = list(evaluation.overall)
    lines = [f"### {title}", "", "| | queries | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    lines.append(f"| **all** | {evaluation.queries} | " + " | ".join(f"{evaluation.overall[k]:.3f}" for k in keys) + " |")
    for group, metrics in evaluation.groups.items():
        lines.append(f"| {group} | {evaluation.group_queries[group]} | "
                     + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"
