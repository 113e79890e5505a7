"""`ingest add --part I/N`: N workers on one folder, into one qdrant-client store, equal one
clean run (same point ids and payloads)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from qdrant_client import QdrantClient
from typer.testing import CliRunner

from core.catalogue.folders import discover
from core.catalogue.parts import parse_part, part_of
from core.errors import ShoeSearchError
from core.store.qdrant import QdrantClientStore
from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


@pytest.fixture
def servers(cli_env, monkeypatch, tmp_path):
    """QDRANT_URL=http://NAME.test:6333 opens qdrant-client local mode under tmp_path/NAME (the
    server code path; no Qdrant server runs here). Returns a function: NAME -> that store."""
    def connect(cls, url, api_key, collection, config=None):
        name = url.split("//")[1].split(".")[0]
        return cls(QdrantClient(path=str(tmp_path / "servers" / name)), collection, f"local {name}", config)

    monkeypatch.setattr(QdrantClientStore, "connect", classmethod(connect))
    monkeypatch.setenv("BATCH_SIZE", "4")

    def use(name: str) -> None:
        monkeypatch.setenv("QDRANT_URL", f"http://{name}.test:6333")

    return use


def _add(*args) -> dict:
    result = runner.invoke(app, ["add", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _points(tmp_path, name: str) -> dict:
    """id -> (payload without the ingest time, vector) of a server's collection."""
    store = QdrantClientStore(QdrantClient(path=str(tmp_path / "servers" / name)), "shoes", name)
    try:
        return {p.id: ({k: v for k, v in p.payload.items() if k != "ingested_at"}, p.vector)
                for p in store.scroll(with_vectors=True)}
    finally:
        store.close()


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][0] == b[key][0], key
        np.testing.assert_allclose(a[key][1], b[key][1], atol=1e-5)


def test_parse_part():
    assert parse_part("1/4") == (1, 4) and parse_part(" 4 / 4 ") == (4, 4)
    for bad in ("0/4", "5/4", "1-4", "a/b", "1/0"):
        with pytest.raises(ShoeSearchError):
            parse_part(bad)


def test_split_is_a_partition_stable_across_mounts(tmp_path):
    root = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=20, variants_per_product=2).factory_dir(
        "factory_a")
    photos = [s.path for s in discover(root)]
    parts = {path: part_of(path, root, 3) for path in photos}
    assert set(parts.values()) == {1, 2, 3} and all(12 <= list(parts.values()).count(i) <= 28 for i in (1, 2, 3))
    moved = tmp_path / "elsewhere" / "mount" / "factory_a"  # the same folder on another machine
    shutil.copytree(root, moved)
    assert {p.relative_to(moved): part_of(p, moved, 3) for p in (s.path for s in discover(moved))} == \
        {p.relative_to(root): n for p, n in parts.items()}
    relative = root.relative_to(tmp_path)  # given as a relative path from another working directory
    assert part_of(photos[0], tmp_path / relative, 3) == parts[photos[0]]


def test_two_workers_equal_one_clean_run(servers, tmp_path):
    folder = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=6,
                            variants_per_product=2).factory_dir("factory_a")
    servers("clean")
    clean = _add(str(folder))
    assert clean["photos_added"] == 18
    servers("parts")
    second = _add(str(folder), "--part", "2/2")
    first = _add(str(folder), "--part", "1/2")
    assert (first["part"], second["part"]) == ("1/2", "2/2")
    assert first["photos_seen"] + second["photos_seen"] == 18 and min(first["photos_seen"], second["photos_seen"]) > 0
    assert first["photos_added"] + second["photos_added"] == 18
    _equal(_points(tmp_path, "parts"), _points(tmp_path, "clean"))
    again = _add(str(folder), "--part", "1/2")  # idempotent: a worker rerun adds nothing
    assert (again["photos_added"], again["photos_unchanged"]) == (0, first["photos_seen"])


def test_worker_processes_equal_one_clean_run(cli_env, tmp_path):
    """Two `python -m ingest add --part` processes, one after the other on the embedded store
    (it serves one process at a time; a server takes them at once)."""
    folder = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=4,
                            variants_per_product=1).factory_dir("factory_a")
    import os

    base = {**os.environ, "BATCH_SIZE": "4"}
    for name, parts in (("clean", [None]), ("parts", ["1/2", "2/2"])):
        env = {**base, "DATA_DIR": str(tmp_path / name)}
        for part in parts:
            command = [sys.executable, "-m", "ingest", "add", str(folder), "--json", "--wait", "60"]
            result = subprocess.run(command + (["--part", part] if part else []), env=env, capture_output=True,
                                    text=True, timeout=600)
            assert result.returncode == 0, result.stderr
    from core.store.edge import EdgeStore

    stores = {name: EdgeStore(tmp_path / name / "qdrant-edge", "shoes") for name in ("clean", "parts")}
    try:
        got = {name: {p.id: ({k: v for k, v in p.payload.items() if k != "ingested_at"}, p.vector)
                      for p in store.scroll(with_vectors=True)} for name, store in stores.items()}
    finally:
        for store in stores.values():
            store.close()
    assert len(got["clean"]) == 8
    _equal(got["parts"], got["clean"])


def test_identical_bytes_split_over_two_parts_settle_with_one_plain_pass(servers, tmp_path):
    """The same bytes under two paths of one factory: a clean run keeps the first path (in
    folder order). Split over two parts, the part written last holds the point until a plain
    `ingest add` of the folder (hashes only) settles it as the clean run does."""
    folder = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=3,
                            variants_per_product=1).factory_dir("factory_a")
    photos = [s.path for s in discover(folder)]
    first = photos[0]
    copy = next(folder / "Z999" / f"copy{i}{first.suffix}" for i in range(100)
                if part_of(folder / "Z999" / f"copy{i}{first.suffix}", folder, 2) != part_of(first, folder, 2))
    copy.parent.mkdir()
    shutil.copyfile(first, copy)
    servers("clean")
    _add(str(folder))
    servers("parts")
    first_part = part_of(first, folder, 2)
    _add(str(folder), "--part", f"{first_part}/2")
    _add(str(folder), "--part", f"{3 - first_part}/2")  # the copy's part last: it takes the point over
    clean, parts = _points(tmp_path, "clean"), _points(tmp_path, "parts")
    moved = [pid for pid in clean if clean[pid][0]["photo_path"] != parts[pid][0]["photo_path"]]
    assert len(moved) == 1 and parts[moved[0]][0]["photo_path"].endswith(copy.name)
    settle = _add(str(folder))
    assert (settle["photos_added"], settle["photos_updated"]) == (0, 1)
    _equal(_points(tmp_path, "parts"), clean)


def test_part_usage_errors(cli_env, tmp_path):
    folder = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=2,
                            variants_per_product=1).factory_dir("factory_a")
    for args, hint in ((["--part", "3/2"], "between 1 and N"), (["--part", "x"], "I/N"),
                       (["--part", "1/2", "--prune"], "--prune needs the whole folder")):
        result = runner.invoke(app, ["add", str(folder), *args])
        assert result.exit_code == 2 and hint in result.output, result.output
