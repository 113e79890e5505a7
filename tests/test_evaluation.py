"""Retrieval metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.quality.metrics import (
    average_precision,
    leave_one_out,
    markdown,
    ndcg_at_k,
    precision_at_k,
    query_metrics,
    recall_at_k,
    text_queries,
)


def test_metrics_of_one_ranking():
    ranking = [True, False, True, False, False]  # 3 relevant in all, one never retrieved
    assert precision_at_k(ranking, 1) == 1.0 and precision_at_k(ranking, 5) == pytest.approx(0.4)
    assert recall_at_k(ranking, 3, 1) == pytest.approx(1 / 3) and recall_at_k(ranking, 3, 5) == pytest.approx(2 / 3)
    assert average_precision(ranking, 3) == pytest.approx((1 / 1 + 2 / 3) / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranking, 3, 10) == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    perfect = query_metrics([True, True, False], 2)
    assert perfect["AP"] == 1.0 and perfect["nDCG@10"] == pytest.approx(1.0) and perfect["R@5"] == 1.0
    assert query_metrics([False] * 10, 2)["AP"] == 0.0


def _at(degrees: float, plane: int = 0) -> np.ndarray:
    v = np.zeros(6, dtype=np.float32)
    v[2 * plane], v[2 * plane + 1] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return v


def test_leave_one_out_on_hand_made_vectors():
    # a1 is closer to b1 (5 deg) than to a2 (8 deg); b2 sits apart. Products A and B.
    vectors = np.stack([_at(0), _at(8), _at(5), _at(60)])
    products = ["f/A", "f/A", "f/B", "f/B"]
    photos = ["p1", "p2", "p3", "p4"]
    result = leave_one_out(vectors, products, photos, ["f1", "f1", "f2", "f2"])
    # a1: [b1, a2, b2] -> AP 1/2;  a2: [b1 (3 deg), a1, b2] -> AP 1/2
    # b1: [a2 (3 deg), a1, b2 (55 deg)] -> AP 1/3;  b2: [a2, b1, a1] -> AP 1/2
    assert result.queries == 4
    assert result.overall["mAP"] == pytest.approx(round((0.5 + 0.5 + 1 / 3 + 0.5) / 4, 4))
    assert result.groups["f1"]["mAP"] == 0.5 and result.groups["f2"]["mAP"] == pytest.approx(round((1 / 3 + 0.5) / 2, 4))
    assert result.overall["P@1"] == 0.0 and result.overall["R@5"] == 1.0


def test_crops_of_the_query_photo_are_skipped_and_lonely_products_are_not_queries():
    vectors = np.stack([_at(0), _at(1), _at(2), _at(0, plane=1)])
    products = ["f/A", "f/A", "f/A", "f/C"]  # C has one photo: no query for it
    photos = ["p1", "p1", "p2", "p9"]  # the first two crops are one photo (a pair of shoes)
    result = leave_one_out(vectors, products, photos, ["f"] * 4)
    assert result.queries == 3
    assert result.overall["P@1"] == 1.0 and result.overall["mAP"] == 1.0  # p1 crops find p2 first, p2 finds p1


def test_text_queries_and_markdown():
    vectors = np.stack([_at(0), _at(10), _at(0, plane=1)])
    result = text_queries(np.stack([_at(5), _at(0, plane=1)]), ["A", "C"], vectors, ["A", "A", "C"])
    assert result.queries == 2 and result.overall["mAP"] == 1.0 and result.overall["P@1"] == 1.0
    table = markdown(result, "Text queries")
    assert table.startswith("### Text queries") and "| **all** | 2 |" in table
    assert "No query had a relevant item" in markdown(text_queries(vectors[:1], ["Z"], vectors, ["A", "A", "C"]), "x")
