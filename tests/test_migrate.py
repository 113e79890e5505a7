"""`ingest migrate`: the embedded store to a server/cluster collection without re-embedding.

No Qdrant server runs here: the target is qdrant-client's local mode (the server code path of
QdrantClientStore), reached by replacing `core.app.open_target_store`, the one function
that turns `--to URL` into a store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient
from typer.testing import CliRunner

import core.app as wiring
from core.errors import SchemaMismatch
from core.store.base import StoredPoint
from core.store.edge import EdgeStore
from core.store.migrate import MigrationFailed, marker_path, migrate
from core.store.qdrant import QdrantClientStore
from ingest.cli import app

DIM = 16
URL = "http://qdrant-cluster.test:6333"
runner = CliRunner()


def _points(n: int, seed: int = 0) -> list[StoredPoint]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [StoredPoint(str(uuid.UUID(int=i + 1)), {
        "factory": f"factory_{'abc'[i % 3]}", "product_id": f"P{i % 40}", "crop_index": i % 2,
        "photo_path": f"/shoes/{i}.jpg", "box": [i, 2 * i, 3 * i + 1, 4 * i + 2], "confidence": 0.5 + i / (4 * n),
        **({"group_duplicate": f"dup-{i % 7:04d}"} if i % 5 == 0 else {})}, vectors[i]) for i in range(n)]


def _edge(data_dir, points):
    store = EdgeStore(data_dir / "qdrant-edge", "shoes")
    store.ensure_collection("clip-test", DIM)
    store.upsert(points)
    return store


def _sidecar(data_dir, collection="shoes"):
    path = data_dir / "clusters" / f"{collection}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"saved_at": "2026-01-01T00:00:00+00:00",
                                "groups": {"dup-0000": [str(uuid.UUID(int=1)), str(uuid.UUID(int=36))]}}))
    return path


def _local_target(collection="shoes_v2", path=None):
    client = QdrantClient(path=str(path)) if path else QdrantClient(":memory:")
    return QdrantClientStore(client, collection, f"qdrant-client local {path or ':memory:'}")


def _contents(store) -> dict:
    return {p.id: (p.payload, p.vector) for p in store.scroll(with_vectors=True)}


def _same(got: dict, expected: dict) -> bool:
    """Same ids and payloads, and vectors equal up to float32 rounding."""
    return got.keys() == expected.keys() and all(
        got[k][0] == expected[k][0] and np.allclose(got[k][1], expected[k][1], atol=1e-6) for k in expected)


def test_migrate_copies_points_model_record_and_group_ids(tmp_path):
    data_dir = tmp_path / "data"
    source = _edge(data_dir, _points(300))
    sidecar = _sidecar(data_dir)
    target = _local_target()
    report = migrate(source, target, data_dir, URL, batch_size=64, sample=32)
    assert (report.source_points, report.target_points, report.copied, report.already_there) == (300, 300, 300, 0)
    assert report.batches == 5 and report.sample == 32 and report.min_sample_cosine > 0.99999
    assert report.problems == [] and not report.resumed
    assert _same(_contents(target), _contents(source))  # same ids, payloads, vectors
    assert target.info().model == "clip-test" and target.info().dimension == DIM
    copied = data_dir / "clusters" / "shoes_v2.json"
    assert json.loads(copied.read_text()) == json.loads(sidecar.read_text())
    assert report.group_ids == f"copied to {copied} (1 groups)"
    marker = json.loads(marker_path(data_dir, source, URL, "shoes_v2").read_text())
    assert marker["finished"] and (marker["done"], marker["total"]) == (300, 300)
    source.close()


def test_rerun_copies_nothing_and_a_changed_payload_again(tmp_path):
    data_dir = tmp_path / "data"
    source = _edge(data_dir, _points(120))
    target = _local_target()
    migrate(source, target, data_dir, URL, batch_size=50)
    again = migrate(source, target, data_dir, URL, batch_size=50)
    assert (again.copied, again.already_there, again.resumed) == (0, 120, False)
    changed = str(uuid.UUID(int=7))
    source.set_payload([changed], {"product_id": "RENAMED"})  # e.g. a product id fixed after the first run
    third = migrate(source, target, data_dir, URL, batch_size=50)
    assert (third.copied, third.already_there) == (1, 119)
    assert target.retrieve([changed])[0].payload["product_id"] == "RENAMED"
    assert third.group_ids == "none (never clustered)"
    source.close()


def test_a_target_that_disagrees_fails_verification_in_one_line(tmp_path):
    data_dir = tmp_path / "data"
    source = _edge(data_dir, _points(40))
    target = _local_target()
    target.ensure_collection("clip-test", DIM)
    target.upsert(_points(45, seed=1)[40:])  # 5 points the source never had
    with pytest.raises(MigrationFailed, match=r"holds 5 points more than the source \(40\)") as err:
        migrate(source, target, data_dir, URL)
    assert "\n" not in str(err.value)
    assert not json.loads(marker_path(data_dir, source, URL, "shoes_v2").read_text())["finished"]
    other = _local_target("other_model")
    other.ensure_collection("clip-other", DIM)
    with pytest.raises(SchemaMismatch, match="model 'clip-other'"):
        migrate(source, other, data_dir, URL)
    source.close()


def test_an_existing_different_sidecar_is_kept(tmp_path):
    data_dir = tmp_path / "data"
    source = _edge(data_dir, _points(10))
    _sidecar(data_dir)
    theirs = data_dir / "clusters" / "shoes_v2.json"
    theirs.write_text(json.dumps({"groups": {}}))
    report = migrate(source, _local_target(), data_dir, URL)
    assert report.group_ids.startswith("kept the existing") and json.loads(theirs.read_text()) == {"groups": {}}
    source.close()


def test_cli_migrate_with_cluster_settings(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    _edge(data_dir, _points(90)).close()
    _sidecar(data_dir)
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("QDRANT_SHARD_NUMBER", "6")
    opened = {}

    def open_target(settings, url, api_key=None, collection=None):
        opened.update(url=url, api_key=api_key, collection=collection, config=wiring.server_collection_config(settings))
        opened["store"] = QdrantClientStore(QdrantClient(":memory:"), collection, "local", opened["config"])
        return opened["store"]

    monkeypatch.setattr(wiring, "open_target_store", open_target)
    result = runner.invoke(app, ["migrate", "--to", URL, "--api-key", "k2", "--collection", "shoes_v2",
                                 "--batch-size", "40", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["copied"], report["target_points"], report["batches"], report["collection"]) == (90, 90, 3, "shoes_v2")
    assert (opened["url"], opened["api_key"], opened["collection"], opened["config"].shard_number) == (URL, "k2", "shoes_v2", 6)
    human = runner.invoke(app, ["migrate", "--to", URL, "--collection", "shoes_v2"])
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"migrated 90 points from embedded store {data_dir / 'qdrant-edge' / 'shoes'} to {URL} "
                               "(collection shoes_v2): 90 copied, 0 already there")  # a fresh :memory: target again
    assert lines[1].startswith("verified: 90 points in the target = 90 in the source; 64 sampled vectors, min cosine 1.0")
    assert lines[2] == f"group ids: copied to {data_dir / 'clusters' / 'shoes_v2.json'} (1 groups)"


def test_cli_migrate_of_an_empty_index_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(wiring, "open_target_store", lambda *a, **k: _local_target())
    result = runner.invoke(app, ["migrate", "--to", URL])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Nothing to migrate: embedded store") and result.stderr.count("\n") == 1


_MIGRATE_SCRIPT = textwrap.dedent("""
    import sys, time
    from qdrant_client import QdrantClient
    import core.app as wiring
    from core.store.qdrant import QdrantClientStore

    target_dir, delay = sys.argv[1], float(sys.argv[2])

    def open_target(settings, url, api_key=None, collection=None):
        store = QdrantClientStore(QdrantClient(path=target_dir), collection, "local " + target_dir,
                                  wiring.server_collection_config(settings))
        upsert = store.upsert
        def slow_upsert(points):
            upsert(points)
            time.sleep(delay)   # a slow network: time to be killed mid-migration
        store.upsert = slow_upsert
        return store

    wiring.open_target_store = open_target
    from ingest.cli import app
    app(["migrate", "--to", "%s", "--collection", "shoes_v2", "--batch-size", "20", "--json"], prog_name="ingest")
""" % URL)


def test_kill_9_mid_migrate_then_rerun_converges(tmp_path):
    data_dir, target_dir = tmp_path / "data", tmp_path / "target"
    source = _edge(data_dir, _points(600))
    expected = _contents(source)
    marker = marker_path(data_dir, source, URL, "shoes_v2")
    source.close()
    script = tmp_path / "migrate.py"
    script.write_text(_MIGRATE_SCRIPT)
    env = {**os.environ, "DATA_DIR": str(data_dir)}
    process = subprocess.Popen([sys.executable, str(script), str(target_dir), "0.1"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            done = json.loads(marker.read_text())["done"]
        except (OSError, ValueError, KeyError):
            pass
        if done >= 200:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = json.loads(marker.read_text())
    assert not interrupted["finished"] and 200 <= interrupted["done"] < 600

    rerun = subprocess.run([sys.executable, str(script), str(target_dir), "0"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["resumed"] and report["already_there"] >= interrupted["done"]
    assert report["copied"] + report["already_there"] == 600 and report["target_points"] == 600
    assert report["problems"] == [] and json.loads(marker.read_text())["finished"]
    target = QdrantClientStore(QdrantClient(path=str(target_dir)), "shoes_v2", "local")
    assert _same(_contents(target), expected)  # equal to the source: ids, payloads, vectors
    assert target.info().model == "clip-test"
    target.close()
