"""Clustering on hand-made vectors whose similarities are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.duplicates.groups import (
    ClusterSettings,
    Constraints,
    Items,
    assign_stable_ids,
    calibrate,
    cluster,
    exact_pairs,
    overlap_matrix,
)
from tests.helpers import brute_force_pairs

DIM = 12


def at(plane: int, degrees: float) -> np.ndarray:
    """A unit vector at `degrees` in the plane (e_2p, e_2p+1): cos(a - b) between two of a plane."""
    v = np.zeros(DIM, dtype=np.float32)
    v[2 * plane] = math.cos(math.radians(degrees))
    v[2 * plane + 1] = math.sin(math.radians(degrees))
    return v


def items(spec: dict[str, tuple[int, float, dict]]) -> Items:
    """{point id: (plane, degrees, payload)} -> Items."""
    ids = list(spec)
    payloads = []
    for pid in ids:
        payload = {"factory": "A", "product_id": pid, "photo_path": f"/p/{pid}.jpg", "crop_index": 0}
        payload.update(spec[pid][2])
        payloads.append(payload)
    return Items(ids, np.stack([at(p, d) for p, d, _ in spec.values()]), payloads)


def groups_of(groups, tier):
    return sorted(sorted(m.point_id for m in g.members) for g in groups if g.tier == tier)


@pytest.fixture
def catalogue() -> Items:
    return items({
        "x0": (0, 0, {"factory": "A"}), "x5": (0, 5, {"factory": "B"}), "x25": (0, 25, {"factory": "A"}),
        "y0": (1, 0, {"factory": "A"}), "y10": (1, 10, {"factory": "A"}),
        "z0": (2, 0, {"factory": "C"}),
    })


def test_tiers(catalogue):
    groups = cluster(catalogue, ClusterSettings(identical=False))
    assert groups_of(groups, "duplicate") == [["x0", "x5"], ["y0", "y10"]]
    assert groups_of(groups, "similar") == [["x0", "x25", "x5"], ["y0", "y10"]]
    similar_x = next(g for g in groups if g.tier == "similar" and len(g.members) == 3)
    assert similar_x.min_similarity == pytest.approx(math.cos(math.radians(25)), abs=1e-5)
    assert similar_x.mean_similarity == pytest.approx(
        (math.cos(math.radians(5)) + math.cos(math.radians(25)) + math.cos(math.radians(20))) / 3, abs=1e-5)


def test_scopes(catalogue):
    cross = cluster(catalogue, ClusterSettings(scope="cross-factory", identical=False))
    assert groups_of(cross, "duplicate") == [["x0", "x5"]]
    assert groups_of(cross, "similar") == [["x0", "x25", "x5"]]  # x5 (B) links both A crops
    within = cluster(catalogue, ClusterSettings(scope="within-factory", identical=False))
    assert groups_of(within, "duplicate") == [["y0", "y10"]]
    assert groups_of(within, "similar") == [["x0", "x25"], ["y0", "y10"]]


def test_chaining_is_reported_and_complete_linkage_splits_it():
    chain = items({"a": (0, 0, {}), "b": (0, 15, {}), "c": (0, 30, {})})  # a~b, b~c >= 0.95, a~c = 0.866
    single = cluster(chain, ClusterSettings(identical=False))
    [dup] = [g for g in single if g.tier == "duplicate"]
    assert sorted(m.point_id for m in dup.members) == ["a", "b", "c"]
    assert dup.min_similarity == pytest.approx(math.cos(math.radians(30)), abs=1e-5)  # the weak link shows
    complete = cluster(chain, ClusterSettings(linkage="complete", identical=False))
    dups = [g for g in complete if g.tier == "duplicate"]
    assert len(dups) == 1 and len(dups[0].members) == 2 and dups[0].min_similarity >= 0.95


def test_representative_rules():
    three = {"p": (0, 0, {"factory": "A", "width": 50, "height": 50, "detector_confidence": 0.5}),
             "q": (0, 2, {"factory": "B", "width": 10, "height": 10, "detector_confidence": 0.9}),
             "r": (0, 4, {"factory": "C", "width": 90, "height": 90, "detector_confidence": 0.1})}

    def rep(rule):
        [group] = [g for g in cluster(items(three), ClusterSettings(representative=rule, identical=False))
                   if g.tier == "duplicate"]
        return group

    medoid = rep("medoid")
    assert medoid.representative.point_id == "q" and medoid.representative.similarity == 1.0
    assert [m.point_id for m in medoid.members][1:] in (["p", "r"], ["r", "p"])
    assert rep("largest").representative.point_id == "r"
    assert rep("confidence").representative.point_id == "q"
    by_factory = rep("factory:A")
    assert by_factory.representative.point_id == "p"
    assert [m.similarity for m in by_factory.members] == pytest.approx(
        [1.0, math.cos(math.radians(2)), math.cos(math.radians(4))], abs=1e-5)


def test_product_level_scores_the_best_crop_pair():
    data = items({
        "p1-front": (0, 0, {"product_id": "P1"}), "p1-sole": (3, 0, {"product_id": "P1"}),
        "p2-front": (0, 3, {"product_id": "P2", "factory": "B"}),
        "p3-sole": (3, 40, {"product_id": "P3"}),
    })
    groups = cluster(data, ClusterSettings(level="product", identical=False))
    [dup] = [g for g in groups if g.tier == "duplicate"]
    assert sorted((m.product_id, m.point_id) for m in dup.members) == [("P1", "p1-front"), ("P2", "p2-front")]
    assert dup.member_points == sorted(["p1-front", "p1-sole", "p2-front"])
    assert dup.min_similarity == pytest.approx(math.cos(math.radians(3)), abs=1e-5)
    crop_level = cluster(data, ClusterSettings(identical=False))
    assert groups_of(crop_level, "duplicate") == [["p1-front", "p2-front"]]


def test_identical_tier_uses_the_bytes():
    data = items({"a": (0, 0, {"photo_sha256": "s1", "factory": "A"}), "b": (0, 0, {"photo_sha256": "s1", "factory": "B"}),
                  "c": (1, 0, {"photo_sha256": "s2"})})
    groups = cluster(data, ClusterSettings())
    assert groups_of(groups, "identical") == [["a", "b"]]
    assert groups_of(cluster(data, ClusterSettings(scope="within-factory")), "identical") == []


def test_blocked_pairs_equal_brute_force():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32))
    vectors = np.repeat(centers, 15, axis=0) + rng.normal(scale=0.25, size=(300, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    for block in (7, 64, 4096):
        rows, cols, sims = exact_pairs(vectors, 0.9, block=block)
        assert set(zip(rows.tolist(), cols.tolist())) == brute_force_pairs(vectors, 0.9)
        assert np.all(rows < cols) and np.all(sims >= 0.9)
    assert len(brute_force_pairs(vectors, 0.9)) > 100


def test_stable_ids_across_an_incremental_run(catalogue):
    first = cluster(catalogue, ClusterSettings(identical=False))
    assert assign_stable_ids(first, {}) == [] and {g.status for g in first} == {"new"}
    previous = {g.id: g.member_points for g in first}
    dup_x = next(g.id for g in first if g.tier == "duplicate" and "x0" in g.member_points)
    dup_y = next(g.id for g in first if g.tier == "duplicate" and "y0" in g.member_points)

    grown = items({**{pid: (p, d, {}) for pid, (p, d) in
                      {"x0": (0, 0), "x5": (0, 5), "x25": (0, 25), "y0": (1, 0), "y10": (1, 10), "z0": (2, 0)}.items()},
                   "x3": (0, 3, {}),       # joins the x duplicates
                   "w0": (4, 0, {}), "w2": (4, 2, {})})  # a new group
    second = cluster(grown, ClusterSettings(identical=False))
    dissolved = assign_stable_ids(second, previous)
    by_members = {tuple(sorted(g.member_points)): g for g in second if g.tier == "duplicate"}
    assert by_members[("x0", "x3", "x5")].id == dup_x and by_members[("x0", "x3", "x5")].status == "grown"
    assert by_members[("y0", "y10")].id == dup_y and by_members[("y0", "y10")].status == "unchanged"
    assert by_members[("w0", "w2")].status == "new" and by_members[("w0", "w2")].id not in previous
    assert dissolved == []


def test_merge_and_split_keep_the_biggest_id():
    old = {"dup-aaaa": ["a1", "a2", "a3"], "dup-bbbb": ["b1", "b2"]}
    merged = cluster(items({"a1": (0, 0, {}), "a2": (0, 1, {}), "a3": (0, 2, {}), "b1": (0, 5, {}), "b2": (0, 6, {}),
                            "bridge": (0, 3.5, {})}), ClusterSettings(identical=False, similar_threshold=0.95))
    assign_stable_ids(merged, old)
    [dup] = [g for g in merged if g.tier == "duplicate"]
    assert (dup.id, dup.status, dup.previous_ids) == ("dup-aaaa", "merged", ["dup-aaaa", "dup-bbbb"])

    split = cluster(items({"a1": (0, 0, {}), "a2": (0, 1, {}), "a3": (1, 0, {}), "b1": (1, 1, {})}),
                    ClusterSettings(identical=False, similar_threshold=0.95))
    dissolved = assign_stable_ids(split, {"dup-aaaa": ["a1", "a2", "a3", "b1"]})
    statuses = sorted((g.status, g.id == "dup-aaaa") for g in split if g.tier == "duplicate")
    assert statuses == [("split", False), ("split", True)] and dissolved == []


def test_overlap_matrix(catalogue):
    groups = cluster(catalogue, ClusterSettings(identical=False))
    matrix = overlap_matrix([g for g in groups if g.tier == "duplicate"], ["A", "B", "C"])
    assert matrix == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_calibration_curve_and_target_precision():
    rng = np.random.default_rng(1)
    same_scores = rng.uniform(0.88, 1.0, 200)
    other_scores = rng.uniform(0.5, 0.93, 300)
    scores = np.concatenate([same_scores, other_scores])
    labels = [True] * 200 + [False] * 300
    result = calibrate(scores, labels, target_precision=0.98)
    recalls = [row["recall"] for row in result["curve"]]
    assert all(a >= b for a, b in zip(recalls, recalls[1:]))  # recall never rises with the threshold
    chosen = result["threshold_for_target"]
    predicted = scores >= chosen
    tp = int((predicted & np.array(labels)).sum())
    assert tp / predicted.sum() >= 0.98 and 0.88 <= chosen <= 0.94
    lower = [row for row in result["curve"] if row["threshold"] < chosen]
    assert all(row["precision"] < 0.98 for row in lower)  # the lowest threshold that meets it


# --------------------------------------------------------------------------- review decisions


def keyed(spec: dict[str, tuple[int, float, dict]]) -> Items:
    """items() whose crops carry a content hash: crop key crop:<sha of the id>:0."""
    return items({pid: (p, d, {"photo_sha256": sha(pid), **extra}) for pid, (p, d, extra) in spec.items()})


def sha(pid: str) -> str:
    import hashlib

    return hashlib.sha256(pid.encode()).hexdigest()


def ck(pid: str) -> str:
    return f"crop:{sha(pid)}:0"


def together(groups, a: str, b: str) -> bool:
    return any({a, b} <= set(g.member_points) for g in groups if g.tier != "identical")


CHAIN = {"a": (0, 0, {}), "b": (0, 8, {}), "c": (0, 16, {}), "d": (0, 24, {})}  # neighbours cos 8deg = 0.990


def test_a_rejected_pair_is_never_grouped_at_any_threshold_linkage_or_level():
    data = keyed(CHAIN)
    assert together(cluster(data, ClusterSettings(identical=False, duplicate_threshold=0.98)), "a", "b")
    rejected = Constraints(different=(tuple(sorted((ck("a"), ck("b")))),))
    for threshold in (0.99, 0.95, 0.9, 0.8, 0.5, -1.0):
        for linkage in ("single", "complete"):
            for level in ("crop", "product"):
                options = ClusterSettings(duplicate_threshold=threshold, similar_threshold=threshold, linkage=linkage,
                                          level=level, identical=False)
                groups = cluster(data, options, constraints=rejected)
                assert not together(groups, "a", "b"), (threshold, linkage, level)
                if threshold <= 0.9:  # the rest still groups
                    assert together(groups, "c", "d")


def test_a_rejection_through_a_chain_of_confirmations_still_wins():
    data = keyed(CHAIN)
    constraints = Constraints(same=((ck("a"), ck("b")), (ck("b"), ck("c"))), different=((ck("a"), ck("c")),))
    for linkage in ("single", "complete"):
        groups = cluster(data, ClusterSettings(identical=False, duplicate_threshold=0.5, similar_threshold=0.5,
                                               linkage=linkage), constraints=constraints)
        assert not together(groups, "a", "c")
        assert together(groups, "a", "b")  # the first confirmation holds; the one that would join a and c not


def test_confirmed_members_stay_together_above_their_similarity_and_are_reviewed():
    data = keyed({**CHAIN, "z": (1, 0, {})})
    plain = cluster(data, ClusterSettings(identical=False, duplicate_threshold=0.999, similar_threshold=0.999))
    assert not together(plain, "a", "d")
    confirmed = Constraints(same=((ck("a"), ck("d")),))
    for linkage in ("single", "complete"):
        groups = cluster(data, ClusterSettings(identical=False, duplicate_threshold=0.999, similar_threshold=0.999,
                                               linkage=linkage), constraints=confirmed)
        [group] = [g for g in groups if g.tier == "duplicate"]
        assert sorted(group.member_points) == ["a", "d"] and group.reviewed
        assert group.min_similarity == pytest.approx(math.cos(math.radians(24)), abs=1e-5)  # shown as it is

    # A group is reviewed while every member is joined by decisions; a new member reopens it.
    both = Constraints(same=((ck("a"), ck("b")),))
    [ab] = [g for g in cluster(data, ClusterSettings(identical=False, duplicate_threshold=0.985), constraints=both)
            if g.tier == "duplicate"]
    assert sorted(ab.member_points) == ["a", "b", "c", "d"] and not ab.reviewed  # c, d undecided
    [ab] = [g for g in cluster(keyed({"a": CHAIN["a"], "b": CHAIN["b"]}), ClusterSettings(identical=False),
                               constraints=both) if g.tier == "duplicate"]
    assert ab.reviewed


def test_photo_and_product_keys_reach_their_crops():
    data = keyed({"a1": (0, 0, {"product_id": "P", "factory": "A"}), "a2": (1, 0, {"product_id": "P", "factory": "A"}),
                  "b1": (0, 1, {"product_id": "Q", "factory": "B"}), "b2": (1, 1, {"product_id": "Q", "factory": "B"})})
    options = ClusterSettings(identical=False)
    assert together(cluster(data, options), "a1", "b1") and together(cluster(data, options), "a2", "b2")
    # Products decided different: no crop of one groups with a crop of the other.
    apart = Constraints(different=(("product:A/P", "product:B/Q"),))
    for level in ("crop", "product"):
        groups = cluster(data, ClusterSettings(identical=False, level=level), constraints=apart)
        assert not [g for g in groups if g.tier != "identical"]
    # A product link groups the products, but does not glue a front view to a sole view.
    linked = Constraints(same=(("product:A/P", "product:B/Q"),))
    far = keyed({"a1": (0, 0, {"product_id": "P", "factory": "A"}), "b9": (3, 0, {"product_id": "Q", "factory": "B"})})
    assert not together(cluster(far, options, constraints=linked), "a1", "b9")
    product_level = cluster(far, ClusterSettings(identical=False, level="product"), constraints=linked)
    assert together(product_level, "a1", "b9") and all(g.reviewed for g in product_level)
    # A photo key (an imported photo path) stands for its crops.
    photo = Constraints(different=((f"photo:{sha('a1')}", f"photo:{sha('b1')}"),))
    assert not together(cluster(data, options, constraints=photo), "a1", "b1")


def test_a_chosen_representative_leads_its_group():
    data = keyed({"p": (0, 0, {}), "q": (0, 2, {}), "r": (0, 4, {})})
    [medoid] = [g for g in cluster(data, ClusterSettings(identical=False)) if g.tier == "duplicate"]
    assert medoid.representative.point_id == "q"
    chosen = Constraints(representatives=frozenset({ck("r")}))
    [group] = [g for g in cluster(data, ClusterSettings(identical=False), constraints=chosen) if g.tier == "duplicate"]
    assert group.representative.point_id == "r" and group.representative.similarity == 1.0
    assert [m.point_id for m in group.members] == ["r", "q", "p"]


def test_cross_factory_complete_linkage_never_returns_a_single_factory_group():
    # On a line (degrees): a2 1, a1 3, b 7, c 10; pairs within 8.1 degrees clear 0.99. a1 ~ a2 (one
    # factory) are closest: complete linkage over every pair merged them first, then could not add
    # b or c (a2 ~ c is 9 degrees) and returned {a1, a2}, a single-factory "cross-factory" group.
    data = items({"a1": (0, 3, {"factory": "A"}), "a2": (0, 1, {"factory": "A"}), "b": (0, 7, {"factory": "B"}),
                  "c": (0, 10, {"factory": "C"})})
    options = ClusterSettings(identical=False, scope="cross-factory", linkage="complete", duplicate_threshold=0.99,
                              similar_threshold=0.99)
    groups = cluster(data, options)
    assert groups_of(groups, "duplicate") == [["a1", "b", "c"]]  # every cross-factory pair inside clears 0.99
    for group in groups:
        assert len(group.factories) >= 2
    # Random catalogues: every cross-factory group holds two factories at every threshold and linkage.
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(6, DIM))
    vectors = np.repeat(centers, 8, axis=0) + rng.normal(scale=0.35, size=(48, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    payloads = [{"factory": "ABC"[k % 3], "product_id": str(k)} for k in range(48)]
    data = Items([str(k) for k in range(48)], vectors, payloads)
    found = 0
    for threshold in (0.99, 0.97, 0.95, 0.9, 0.8):
        for linkage in ("single", "complete"):
            for group in cluster(data, ClusterSettings(identical=False, scope="cross-factory", linkage=linkage,
                                                       duplicate_threshold=threshold, similar_threshold=threshold)):
                assert len(group.factories) >= 2, (threshold, linkage, group.factories)
                found += 1
    assert found > 20
