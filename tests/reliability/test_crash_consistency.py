"""A real kill -9 at named points of `add`, `remove` and `cluster` (with a projection head): a rerun
ends in the state of a clean run, with no orphans (head points without a point, thumbnails
without a point, group ids the sidecar does not know).

The process kills itself with SIGKILL at an exact step (SHOE_SEARCH_CRASH_AT, core.pipeline.journal);
nothing in it can run after that point, as with a power cut.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from core.pipeline.journal import CRASH_ENV
from core.quality.head_index import head_collection
from core.quality.tune import HeadInfo, ProjectionHead
from core.store.base import StoredPoint
from core.store.edge import EdgeStore
from core.store.lock import copy_sparse
from core.vision.embedder import model_id_for
from tools.sample_catalogue import make_catalogue

COLLECTION = "shoes"


class Setup:
    """A catalogue, a head file and data folders built once for the module."""

    def __init__(self, root: Path, clip: Path) -> None:
        self.root = root
        self.clip = clip
        self.catalogue = make_catalogue(root / "shoes", factories=2, products_per_factory=6, variants_per_product=1)
        head = ProjectionHead(
            np.random.default_rng(3).normal(size=(8, 16)).astype(np.float32),
            HeadInfo(base_model=model_id_for(str(clip)), dim_in=16, dim_out=8, data_hash="c0ffee123456",
                     loss="mnr", epochs_run=1, best_epoch=1, train_products=1, val_products=1))
        self.head_path = head.save(root / "head.npz")
        self.head_name = head_collection(COLLECTION, head)

    def env(self, data_dir: Path, crash_at: str | None = None) -> dict[str, str]:
        env = {**os.environ, "DATA_DIR": str(data_dir), "CLIP_MODEL": str(self.clip), "DETECTOR_MODEL": "none",
               "BATCH_SIZE": "4", "DEVICE": "cpu", "EMBED_PRECISION": "fp32", "MIN_FREE_DISK_MB": "1",
               "PROJECTION_HEAD": str(self.head_path)}
        env.pop(CRASH_ENV, None)
        if crash_at:
            env[CRASH_ENV] = crash_at
        return env

    def ingest(self, data_dir: Path, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ingest", *args], env=self.env(data_dir, crash_at),
                              capture_output=True, text=True, timeout=600)

    def ok(self, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
        result = self.ingest(data_dir, *args)
        assert result.returncode == 0, result.stderr
        return result

    def crash(self, data_dir: Path, crash_at: str, *args: str) -> None:
        result = self.ingest(data_dir, *args, crash_at=crash_at)
        assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])

    def copy(self, source: Path, name: str) -> Path:
        target = self.root / name
        copy_sparse(source, target)
        return target

    def folder(self, factory: str) -> str:
        return str(self.catalogue.factory_dir(factory))


def _payloads(store: EdgeStore) -> dict[str, dict]:
    # ingested_at is the clock; a group key set to null is the same as none (a dissolved group)
    return {p.id: {k: v for k, v in p.payload.items()
                   if k != "ingested_at" and not (k.startswith("group_") and v is None)}
            for p in store.scroll()}


def state(data_dir: Path, head_name: str) -> dict:
    """Everything a run leaves: points, head points, thumbnails, journal, cluster sidecar."""
    found = {}
    for name in (COLLECTION, head_name):
        store = EdgeStore(data_dir / "qdrant-edge", name, min_free_mb=0)
        try:
            found[name] = _payloads(store)
        finally:
            store.close()
    crops = data_dir / "crops"
    journal = data_dir / "journal" / COLLECTION
    sidecar = data_dir / "clusters" / f"{COLLECTION}.json"
    return {
        "points": found[COLLECTION],
        "head": found[head_name],
        "thumbnails": sorted(str(p.relative_to(data_dir)) for p in crops.rglob("*.jpg")) if crops.exists() else [],
        "journal": sorted(p.name for p in journal.iterdir()) if journal.exists() else [],
        "groups": json.loads(sidecar.read_text())["groups"] if sidecar.exists() else None,
    }


def assert_no_orphans(snapshot: dict) -> None:
    assert snapshot["head"].keys() == snapshot["points"].keys()
    assert snapshot["thumbnails"] == sorted(p["crop_path"] for p in snapshot["points"].values())
    assert snapshot["journal"] == []


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir) -> Setup:
    s = Setup(tmp_path_factory.mktemp("crash"), tiny_clip_dir)
    s.base_a = s.root / "base_a"  # factory_a, projected into the head
    s.ok(s.base_a, "add", s.folder("factory_a"))
    s.ok(s.base_a, "reproject")
    s.clean_ab = s.copy(s.base_a, "clean_ab")  # + factory_b, added with the head set
    s.ok(s.clean_ab, "add", s.folder("factory_b"))
    return s


@pytest.mark.parametrize("crash_at", ["add.journaled:2", "add.after_thumbnails:2", "add.after_head:2",
                                      "add.after_main:2"])
def test_kill_9_during_add_then_rerun_equals_a_clean_run(setup, crash_at):
    data = setup.copy(setup.base_a, f"add-{crash_at.replace(':', '-')}")
    setup.crash(data, crash_at, "add", setup.folder("factory_b"))
    crashed = state(data, setup.head_name)
    assert crashed["journal"], "the killed batch left its record"
    setup.ok(data, "add", setup.folder("factory_b"))
    after, clean = state(data, setup.head_name), state(setup.clean_ab, setup.head_name)
    assert after == clean
    assert_no_orphans(after)
    assert len(after["points"]) == len(setup.catalogue.photos)


@pytest.mark.parametrize("crash_at", ["remove.journaled", "remove.after_head", "remove.after_main"])
def test_kill_9_during_remove_then_rerun_equals_a_clean_run(setup, crash_at):
    clean = setup.copy(setup.clean_ab, f"clean-remove-{crash_at}")
    setup.ok(clean, "remove", "--factory", "factory_a", "--yes")
    data = setup.copy(setup.clean_ab, f"remove-{crash_at}")
    setup.crash(data, crash_at, "remove", "--factory", "factory_a", "--yes")
    crashed = state(data, setup.head_name)
    if crash_at == "remove.after_main":  # the points are gone; their thumbnails not yet
        assert len(crashed["thumbnails"]) > len(crashed["points"])
    setup.ok(data, "remove", "--factory", "factory_a", "--yes")
    after = state(data, setup.head_name)
    assert after == state(clean, setup.head_name)
    assert_no_orphans(after)
    assert {p["factory"] for p in after["points"].values()} == {"factory_b"}


def test_a_killed_remove_is_finished_by_the_next_add(setup):
    """The rerun need not be the same command: any add or remove replays the journal."""
    product = setup.catalogue.factory_dir("factory_a") / "A101"
    clean = setup.copy(setup.clean_ab, "clean-remove-path")
    setup.ok(clean, "remove", "--path", str(product), "--yes")
    data = setup.copy(setup.clean_ab, "remove-path-then-add")
    setup.crash(data, "remove.after_head", "remove", "--path", str(product), "--yes")
    photo_search_ids = set(state(data, setup.head_name)["head"])
    assert not any(str(product) in p["photo_path"] for p in state(data, setup.head_name)["head"].values())
    assert len(photo_search_ids) < len(state(data, setup.head_name)["points"])  # the head went first
    report = json.loads(setup.ok(data, "add", setup.folder("factory_b"), "--json").stdout)
    assert report["photos_unchanged"] == 12 and report["photos_added"] == 0
    after = state(data, setup.head_name)
    assert after == state(clean, setup.head_name)
    assert_no_orphans(after)


def _crafted_store(data_dir: Path) -> None:
    """Hand-made vectors (the tiny test CLIP puts every crop in one group): four tight pairs
    inside each factory (cosine ~0.99) and four loose pairs across factories (cosine 0.7)."""
    dim, rng = 64, np.random.default_rng(11)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]  # orthonormal directions, one per use
    directions = iter(basis)
    points = []

    def add(factory: str, product: str, vector: np.ndarray) -> None:
        pid = str(uuid.UUID(int=len(points) + 1))
        points.append(StoredPoint(pid, {"factory": factory, "product_id": product, "crop_index": 0,
                                        "photo_path": f"/photos/{factory}/{product}-{len(points)}.jpg"},
                                  vector / np.linalg.norm(vector)))

    for factory in ("factory_a", "factory_b"):
        for k in range(4):
            center = next(directions)
            for _ in range(2):
                add(factory, f"T{k}", center + 0.1 * next(directions))
    for k in range(4):
        center = next(directions)
        add("factory_a", f"L{k}", center + 0.655 * next(directions))
        add("factory_b", f"L{k}", center + 0.655 * next(directions))
    store = EdgeStore(data_dir / "qdrant-edge", COLLECTION, min_free_mb=0)
    try:
        store.ensure_collection("hand-made", dim)
        store.upsert(points)
    finally:
        store.close()


@pytest.mark.parametrize("crash_at", ["cluster.after_group:1", "cluster.after_group:4", "cluster.before_sidecar"])
def test_kill_9_during_cluster_leaves_no_orphan_group_ids(setup, crash_at):
    """Run 1 (tight pairs), then a run killed mid-way that groups the loose cross-factory pairs,
    then run 1's settings again: equal to two clean runs, though the killed run wrote group ids
    that the sidecar never knew."""
    tight = ["--duplicate-threshold", "0.97", "--similar-threshold", "0.95"]
    loose = ["--duplicate-threshold", "0.99", "--similar-threshold", "0.6", "--scope", "cross-factory"]
    report = ["-o", str(setup.root / "report")]
    base = setup.root / f"cluster-base-{crash_at}"
    _crafted_store(base)
    setup.ok(base, "cluster", *tight, *report)
    clean = setup.copy(base, f"cluster-clean-{crash_at}")
    setup.ok(clean, "cluster", *tight, *report)
    expected = state(clean, setup.head_name)
    assert len(expected["groups"]) == 16  # 8 pairs, each a duplicate and a similar group

    setup.crash(base, crash_at, "cluster", *loose, *report)
    crashed = state(base, setup.head_name)
    orphans = {v for p in crashed["points"].values() for k, v in p.items() if k.startswith("group_")}
    assert orphans - set(crashed["groups"]), "the killed run wrote group ids the sidecar does not know"
    setup.ok(base, "cluster", *tight, *report)
    assert state(base, setup.head_name) == expected


def test_reproject_sweeps_head_points_whose_point_is_gone(setup):
    """A head collection from an earlier PROJECTION_HEAD is not replayed by add/remove: reproject
    reconciles it with the points."""
    data = setup.copy(setup.clean_ab, "reproject-sweep")
    env = setup.env(data)
    env.pop("PROJECTION_HEAD")
    removed = subprocess.run([sys.executable, "-m", "ingest", "remove", "--factory", "factory_a", "--yes"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert removed.returncode == 0, removed.stderr
    stale = state(data, setup.head_name)
    assert len(stale["head"]) == 24 and len(stale["points"]) == 12
    setup.ok(data, "reproject")
    assert_no_orphans(state(data, setup.head_name))
