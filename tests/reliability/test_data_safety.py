"""Export / import between backends, and removal that asks first."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from qdrant_client import QdrantClient
from typer.testing import CliRunner

from core.errors import SchemaMismatch, ShoeSearchError
from core.store.edge import EdgeStore
from core.store.qdrant import QdrantClientStore
from core.store.transfer import export_points, import_points
from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


@pytest.fixture
def indexed(cli_env, tmp_path):
    catalogue = make_catalogue(tmp_path / "shoes", factories=2, products_per_factory=3, variants_per_product=1)
    for factory in ("factory_a", "factory_b"):
        assert runner.invoke(app, ["add", str(catalogue.factory_dir(factory))]).exit_code == 0
    return catalogue, tmp_path


def _points(store):
    return {p.id: (p.payload, p.vector) for p in store.scroll(with_vectors=True)}


def test_export_from_embedded_import_into_qdrant_client(indexed):
    _, tmp = indexed
    result = runner.invoke(app, ["export", str(tmp / "points.jsonl.gz"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["exported"] == 12
    with gzip.open(tmp / "points.jsonl.gz", "rt") as handle:
        header = json.loads(handle.readline())
    assert (header["format"], header["model"], header["dimension"]) == ("shoe-search-points", "tiny-clip", 16)

    edge = EdgeStore(tmp / "data" / "qdrant-edge", "shoes")
    source = _points(edge)
    edge.close()
    target = QdrantClientStore(QdrantClient(":memory:"), "moved", "qdrant-client :memory:")
    assert import_points(target, tmp / "points.jsonl.gz", batch_size=5) == 12
    assert import_points(target, tmp / "points.jsonl.gz") == 12 and target.count() == 12  # idempotent
    moved = _points(target)
    assert moved.keys() == source.keys()
    for pid, (payload, vector) in source.items():
        assert moved[pid][0] == payload
        np.testing.assert_allclose(moved[pid][1], vector, atol=1e-6)
    assert target.info().model == "tiny-clip"

    other = QdrantClientStore(QdrantClient(":memory:"), "other", "x")
    other.ensure_collection("another-model", 16)
    with pytest.raises(SchemaMismatch):
        import_points(other, tmp / "points.jsonl.gz")


def test_cli_export_of_one_factory_and_import_into_a_new_data_dir(indexed, monkeypatch):
    _, tmp = indexed
    assert runner.invoke(app, ["export", str(tmp / "a.jsonl.gz"), "--factory", "factory_a"]).exit_code == 0
    monkeypatch.setenv("DATA_DIR", str(tmp / "restored"))
    result = runner.invoke(app, ["import", str(tmp / "a.jsonl.gz"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {
        "imported": 6, "points": 6, "store": str(tmp / "restored" / "qdrant-edge")}
    stats = json.loads(runner.invoke(app, ["stats", "--json"]).stdout)
    assert stats["factories"] == {"factory_a": {"crops": 6, "photos": 6}}


def test_import_of_a_wrong_file_is_one_line(indexed):
    _, tmp = indexed
    bogus = tmp / "bogus.jsonl.gz"
    bogus.write_bytes(b"not gzip")
    result = runner.invoke(app, ["import", str(bogus)])
    assert result.exit_code == 1 and "is not a points export" in result.stderr
    with pytest.raises(ShoeSearchError, match="is not a points export"):
        import_points(QdrantClientStore(QdrantClient(":memory:"), "x", "x"), bogus)


def test_remove_asks_first_and_dry_run_changes_nothing(indexed):
    dry = runner.invoke(app, ["remove", "--factory", "factory_a", "--dry-run", "--json"])
    assert json.loads(dry.stdout) == {"matched": 6, "photos": 6, "removed": 0, "dry_run": True}
    declined = runner.invoke(app, ["remove", "--factory", "factory_a"], input="n\n")
    assert declined.exit_code == 1 and "Remove 6 crops of 6 photos?" in declined.output
    assert json.loads(runner.invoke(app, ["stats", "--json"]).stdout)["points"] == 12
    confirmed = runner.invoke(app, ["remove", "--factory", "factory_a"], input="y\n")
    assert confirmed.exit_code == 0
    assert json.loads(runner.invoke(app, ["stats", "--json"]).stdout)["points"] == 6
