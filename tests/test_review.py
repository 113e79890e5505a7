"""Review decisions: stored by photo content, durable, imported and exported, honoured by
`ingest cluster`, used as calibration labels. Real CLI, tiny real CLIP, real Edge store."""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from core.duplicates.review import SAME, Decisions, DecisionsError, PairInput, crop_key, product_key
from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


def invoke(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


@pytest.fixture
def indexed(cli_env, tmp_path):
    catalogue = make_catalogue(tmp_path / "shoes", factories=3, products_per_factory=4, variants_per_product=2)
    invoke("add", *(str(catalogue.factory_dir(f)) for f in ("factory_a", "factory_b", "factory_c")))
    return catalogue, tmp_path


def payloads(tmp_path) -> list[dict]:
    from core.store.edge import EdgeStore

    store = EdgeStore(tmp_path / "data" / "qdrant-edge", "shoes")
    try:
        return [p.payload | {"point_id": p.id, "vector": p.vector} for p in store.scroll(with_vectors=True)]
    finally:
        store.close()


def decisions(tmp_path) -> Decisions:
    return Decisions(tmp_path / "data", "shoes")


def write_csv(path: Path, rows: list[list[str]], header=("a", "b", "decision")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- the file


def test_decisions_persist_latest_wins_and_pairs_are_unordered(tmp_path):
    store = Decisions(tmp_path, "shoes")
    assert store.load().pairs == {}
    a, b, c = (crop_key(ch * 64, 0) for ch in "abc")
    assert store.record([PairInput(a, b, "same"), PairInput(b, c, "different"), PairInput(a, a, "same")]) == 2
    again = Decisions(tmp_path, "shoes").load()  # a new process reads the same
    assert {k: d.decision for k, d in again.pairs.items()} == {(a, b): "same", (b, c): "different"}
    assert store.record([PairInput(b, a, "different")]) == 1  # the other order is the same pair
    assert store.record([PairInput(a, b, "different")]) == 0  # nothing new
    assert Decisions(tmp_path, "shoes").load().pairs[(a, b)].decision == "different"
    store.set_representative(a, {"photo_path": "/x.jpg"})
    store.set_representative(c, replaces=[a, b])
    assert set(Decisions(tmp_path, "shoes").load().representatives) == {c}
    with pytest.raises(DecisionsError):
        store.record([PairInput(a, b, "maybe")])
    assert store.path == tmp_path / "clusters" / "shoes.decisions.json"


WRITER = """
import signal, sys
from core.duplicates.review import Decisions, PairInput, crop_key
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; a write past RLIMIT_FSIZE now kills
store = Decisions(sys.argv[1], "shoes")
k = 0
while True:
    k += 1
    store.record([PairInput(crop_key(f"{k:064x}", 0), crop_key(f"{k + 1:064x}", 0), "same")])
    print(k, flush=True)
"""


def test_kill_9_while_saving_never_leaves_a_damaged_file(tmp_path):
    """A writer saving decisions in a loop is killed (-9) at random moments: every time the file
    still loads, holds every decision that was reported saved, and a new writer goes on."""
    base = Decisions(tmp_path, "shoes")
    # A large file, so that a write takes long enough to be interrupted part way.
    base.record([PairInput(crop_key(f"{k:064x}", 1), crop_key(f"{k + 1:064x}", 1), "different") for k in range(5000)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
        confirmed = 0
        deadline = time.monotonic() + 60
        target = int(rng.integers(2, 6))
        while confirmed < target and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            confirmed = int(line)
        time.sleep(float(rng.uniform(0, 0.05)))  # somewhere inside the next write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert confirmed == target, "the writer did not get going"
        state = Decisions(tmp_path, "shoes").load()  # never damaged
        new = [d for d in state.pairs.values() if d.decision == SAME]
        assert len(new) >= confirmed  # everything reported saved is there
        assert sum(d.decision == "different" for d in state.pairs.values()) == 5000
    # Deterministically mid-write: a file-size limit (prlimit) below the file's size kills the
    # writer (SIGXFSZ, like kill -9: no clean-up runs) part way through writing it.
    before = base.path.read_bytes()
    limit = len(before) // 2
    proc = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], env=env, capture_output=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == -signal.SIGXFSZ and proc.stdout == b""  # died in its first write
    assert base.path.read_bytes() == before and Decisions(tmp_path, "shoes").load().pairs
    assert list(base.path.parent.glob(".*.tmp"))  # its half-written temporary file
    base.record([PairInput(crop_key("f" * 64, 0), crop_key("e" * 64, 0), "same")])  # the next writer goes on
    assert not list(base.path.parent.glob(".*.tmp"))  # what killed writers left is cleared


@pytest.fixture
def small_mount(tmp_path):
    """A 256 KiB tmpfs (full disk, read-only remount); skipped where mounting is not allowed."""
    mounts = []

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_and_read_only_folder_keep_the_saved_decisions(indexed, small_mount):
    catalogue, tmp = indexed
    small_mount(tmp / "data" / "clusters")
    photos = catalogue.photos
    first = write_csv(tmp / "first.csv", [[photos[0].path, photos[3].path, "different"]])
    invoke("review", "import", str(first))
    saved = decisions(tmp).path.read_bytes()

    filler = tmp / "data" / "clusters" / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError, match="No space left"):  # fill the disk
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    more = write_csv(tmp / "more.csv", [[p.path, photos[0].path, "same"] for p in photos[1:30]])
    result = invoke("review", "import", str(more), code=1)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "No space left on device; the decisions saved before are kept" in result.stderr
    assert decisions(tmp).path.read_bytes() == saved and len(decisions(tmp).load().pairs) == 1

    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tmp / "data" / "clusters")], check=True)
    result = invoke("review", "import", str(more), code=1)
    assert result.stderr.count("\n") == 1 and "Read-only file system" in result.stderr, result.stderr
    result = invoke("cluster", "-o", str(tmp / "r"), code=1)  # the sidecar cannot be saved either: one line
    assert result.stderr.count("\n") == 1 and "cannot save the group ids" in result.stderr, result.stderr
    assert len(decisions(tmp).load().pairs) == 1


def test_a_damaged_decisions_file_is_one_line_and_never_overwritten(indexed):
    catalogue, tmp = indexed
    path = decisions(tmp).path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"version": 1, "decisions": [{"a": ')
    for args in (["cluster", "-o", str(tmp / "r")], ["review", "status"],
                 ["review", "import", str(write_csv(tmp / "x.csv", [[catalogue.photos[0].path, catalogue.photos[1].path,
                                                                     "same"]]))]):
        result = invoke(*args, code=1)
        assert result.stderr.count("\n") == 1 and "are damaged" in result.stderr and str(path) in result.stderr
    assert path.read_text() == '{"version": 1, "decisions": [{"a": '


# --------------------------------------------------------------------------- import and export


def test_import_export_round_trip_csv_and_json(indexed):
    catalogue, tmp = indexed
    photos = catalogue.photos
    rel = lambda p: os.path.relpath(p.path, tmp)  # noqa: E731 - paths relative to the CSV's folder
    source = write_csv(tmp / "decisions.csv", [
        [rel(photos[0]), rel(photos[9]), "same"],
        [str(photos[1].path), str(photos[2].path), "Different"],
        ["factory_a/A100", "factory_b/B100", "same"],
        ["factory_b/B100", "factory_c/C100", "same"],
        ["factory_a/A103", "factory_c/C102", "different"],
        ["", "", ""],
    ])
    result = json.loads(invoke("review", "import", str(source), "--json").stdout)
    assert (result["decisions"], result["changed"], result["unmatched"]) == (5, 5, [])
    state = decisions(tmp).load()
    assert product_key("factory_a", "A100") in {k for pair in state.pairs for k in pair}

    exported = {}
    for suffix in ("csv", "json"):
        out = tmp / f"export.{suffix}"
        assert json.loads(invoke("review", "export", str(out), "--json").stdout)["decisions"] == 5
        exported[suffix] = out
    rows = list(csv.DictReader(open(exported["csv"])))
    assert {(r["a"], r["b"], r["decision"]) for r in rows} >= {("factory_a/A100", "factory_b/B100", "same")}
    photo_rows = [r for r in rows if r["a_sha256"]]
    assert {r["a"] for r in photo_rows} | {r["b"] for r in photo_rows} == {
        str(photos[k].path) for k in (0, 9, 1, 2)}
    assert json.loads(exported["json"].read_text())["decisions"][0].keys() >= {"a", "b", "decision", "a_key"}

    for suffix, out in exported.items():  # each format alone restores the same decisions
        decisions(tmp).path.unlink()
        invoke("review", "import", str(out))
        again = decisions(tmp).load()
        assert {k: d.decision for k, d in again.pairs.items()} == {k: d.decision for k, d in state.pairs.items()}, suffix
        assert {k: d.decided_at for k, d in again.pairs.items()} == {k: d.decided_at for k, d in state.pairs.items()}


def test_import_refuses_a_malformed_file_and_lists_unknown_photos(indexed):
    catalogue, tmp = indexed
    photos = catalogue.photos
    bad = write_csv(tmp / "bad.csv", [[photos[0].path, photos[1].path, "same"], [photos[0].path, photos[2].path, "maybe"]])
    result = invoke("review", "import", str(bad), code=1)
    assert result.stderr == f"error: {bad}: line 3: decision must be same or different, not 'maybe'\n"
    assert not decisions(tmp).path.exists()  # nothing imported
    columns = write_csv(tmp / "cols.csv", [[photos[0].path, photos[1].path, "1"]], header=("a", "b", "same"))
    result = invoke("review", "import", str(columns), code=1)
    assert "line 1: need columns a,b,decision" in result.stderr
    unknown = write_csv(tmp / "unknown.csv", [[photos[0].path, photos[1].path, "same"], ["no/such.jpg", photos[1].path,
                                                                                       "same"],
                                              ["factory_z/Z1", "factory_a/A100", "different"]])
    result = invoke("review", "import", str(unknown), code=1)
    assert "skipped line 3: no/such.jpg: not an indexed photo" in result.stderr
    assert "skipped line 4: factory_z/Z1" in result.stderr
    assert len(decisions(tmp).load().pairs) == 1  # the rest is imported


def test_decisions_survive_a_moved_photo_and_a_reingest(indexed):
    catalogue, tmp = indexed
    photo, other = catalogue.photos[0], catalogue.photos[4]
    invoke("review", "import", str(write_csv(tmp / "d.csv", [[photo.path, other.path, "different"]])))
    moved = photo.path.with_name("renamed-front.jpg")
    photo.path.rename(moved)
    invoke("add", str(catalogue.factory_dir("factory_a")))  # the photo is updated, not added again
    invoke("review", "export", str(tmp / "after.csv"))
    [row] = list(csv.DictReader(open(tmp / "after.csv")))
    assert str(moved) in (row["a"], row["b"]) and str(photo.path) not in (row["a"], row["b"])
    # and clustering still keeps the pair apart, at a threshold that would group everything
    invoke("cluster", "--duplicate-threshold", "-1", "--similar-threshold", "-1", "-o", str(tmp / "r"))
    groups = json.loads((tmp / "r" / "groups.json").read_text())
    by_path = {p["photo_path"]: p["point_id"] for p in payloads(tmp)}
    for g in groups:
        if g["tier"] != "identical":
            assert not {by_path[str(moved)], by_path[str(other.path)]} <= set(g["member_points"])


# --------------------------------------------------------------------------- clustering and calibration


def test_cluster_honours_decisions_and_marks_reviewed_groups(indexed):
    catalogue, tmp = indexed
    points = payloads(tmp)
    invoke("cluster", "--duplicate-threshold", "0.99", "--similar-threshold", "0.97", "-o", str(tmp / "r1"))
    groups = json.loads((tmp / "r1" / "groups.json").read_text())
    group = max((g for g in groups if g["tier"] == "duplicate"), key=lambda g: len(g["members"]))
    assert len(group["members"]) >= 3 and not group["reviewed"]
    rep, rejected, *rest = group["members"]
    path_of = {p["point_id"]: p["photo_path"] for p in points}
    rows = [[path_of[rep["point_id"]], path_of[rejected["point_id"]], "different"]]
    rows += [[path_of[rep["point_id"]], path_of[m["point_id"]], "same"] for m in rest]
    invoke("review", "import", str(write_csv(tmp / "d.csv", rows)))

    for dup, sim in (("0.99", "0.97"), ("0.95", "0.9"), ("0.8", "0.5"), ("-1", "-1")):
        for linkage in ("single", "complete"):
            out = tmp / f"r-{dup}-{linkage}"
            summary = json.loads(invoke("cluster", "--duplicate-threshold", dup, "--similar-threshold", sim,
                                        "--linkage", linkage, "-o", str(out), "--json").stdout)
            found = json.loads((out / "groups.json").read_text())
            for g in found:
                if g["tier"] != "identical":
                    assert not {rep["point_id"], rejected["point_id"]} <= set(g["member_points"]), (dup, linkage)
            kept = [g for g in found if g["tier"] == "duplicate" and rep["point_id"] in g["member_points"]]
            assert len(kept) == 1 and {m["point_id"] for m in rest} <= set(kept[0]["member_points"])
            assert kept[0]["reviewed"] == (set(kept[0]["member_points"]) == {rep["point_id"], *(m["point_id"] for m in rest)})
            assert summary["tiers"]["duplicate"]["reviewed"] == sum(g["reviewed"] for g in found if g["tier"] == "duplicate")
    invoke("cluster", "--duplicate-threshold", "0.99", "--similar-threshold", "0.97", "-o", str(tmp / "r2"))
    again = json.loads((tmp / "r2" / "groups.json").read_text())
    [confirmed] = [g for g in again if g["tier"] == "duplicate" and rep["point_id"] in g["member_points"]]
    assert confirmed["reviewed"] and confirmed["id"] == group["id"]  # the stable id carries on
    with open(tmp / "r2" / "groups.csv") as handle:
        assert {r["reviewed"] for r in csv.DictReader(handle) if r["group_id"] == group["id"]} == {"1"}
    status = json.loads(invoke("review", "status", "--json").stdout)
    assert status["same"] == len(rest) and status["different"] == 1
    assert status["last_clustering"]["tiers"]["duplicate"]["reviewed"] >= 1


def test_calibration_uses_the_decisions_when_no_file_is_given(indexed):
    catalogue, tmp = indexed
    result = invoke("cluster", "--calibrate", "-o", str(tmp / "cal"), code=1)
    assert "No review decisions yet" in result.stderr and result.stderr.count("\n") == 1
    photos = catalogue.photos
    rows = [[a.path, b.path, "same" if a.design == b.design else "different"] for a, b in zip(photos, photos[1:])]
    invoke("review", "import", str(write_csv(tmp / "labels.csv", rows)))
    report = json.loads(invoke("cluster", "--calibrate", "--target-precision", "0.9", "-o", str(tmp / "cal"),
                               "--json").stdout)
    assert report["labels"] == "review decisions" and report["pairs"] == len(rows) and report["unmatched"] == []
    assert report["positives"] == sum(r[2] == "same" for r in rows)
    # the same labels as a file give the same curve
    file_rows = [[a, b, int(d == "same")] for a, b, d in rows]
    by_file = json.loads(invoke("cluster", "--calibrate", str(write_csv(tmp / "f.csv", file_rows, ("a", "b", "same"))),
                                "--target-precision", "0.9", "-o", str(tmp / "cal2"), "--json").stdout)
    assert by_file["curve"] == report["curve"]
    assert (tmp / "cal" / "pr_curve.png").stat().st_size > 5000
    result = invoke("cluster", str(tmp / "f.csv"), code=2)  # a labels file without --calibrate
    assert "goes with --calibrate" in result.output


def test_product_mapping_export(indexed):
    catalogue, tmp = indexed
    rows = [["factory_a/A100", "factory_b/B100", "same"], ["factory_c/C100", "factory_b/B100", "same"],
            ["factory_a/A101", "factory_c/C101", "same"], ["factory_a/A102", "factory_b/B103", "different"]]
    invoke("review", "import", str(write_csv(tmp / "links.csv", rows)))
    out = json.loads(invoke("review", "export", "--products", str(tmp / "products.json"), "--json").stdout)
    assert (out["product_groups"], out["links"]) == (2, 3)
    mapping = json.loads((tmp / "products.json").read_text())
    assert [g["products"] for g in mapping["groups"]] == [["factory_a/A100", "factory_b/B100", "factory_c/C100"],
                                                           ["factory_a/A101", "factory_c/C101"]]
    vectors: dict[str, list] = {}
    for p in payloads(tmp):
        vectors.setdefault(f"{p['factory']}/{p['product_id']}", []).append(np.asarray(p["vector"], dtype=np.float32))
    for group in mapping["groups"]:
        for link in group["links"]:
            a, b = np.stack(vectors[link["a"]]), np.stack(vectors[link["b"]])
            a /= np.linalg.norm(a, axis=1, keepdims=True)
            b /= np.linalg.norm(b, axis=1, keepdims=True)
            assert link["best_similarity"] == pytest.approx(float((a @ b.T).max()), abs=1e-5)
            assert link["decided_at"]
    invoke("review", "export", "--products", str(tmp / "products.csv"))
    csv_rows = list(csv.DictReader(open(tmp / "products.csv")))
    assert [(r["group"], r["a"], r["b"]) for r in csv_rows] == [
        (str(g["group"]), link["a"], link["b"]) for g in mapping["groups"] for link in g["links"]]


def test_review_status_counts_the_last_clustering_per_tier(tmp_path, monkeypatch):
    from core.duplicates.service import TierProgress, last_clustering

    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert last_clustering(tmp_path / "data", "shoes").tiers == {}
    assert "no clustering yet" in invoke("review", "status").stdout
    sidecar = tmp_path / "data" / "clusters" / "shoes.json"
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text(json.dumps({"saved_at": "2026-01-02T03:04:05+00:00", "reviewed": ["dup-bbb", "gone"],
                                   "groups": {"sim-a": [], "dup-bbb": [], "dup-c": [], "idt-d": []}}))
    progress = last_clustering(tmp_path / "data", "shoes")
    assert progress.tiers == {"similar": TierProgress(1, 0), "duplicate": TierProgress(2, 1),
                              "identical": TierProgress(1, 0)}
    text = invoke("review", "status").stdout
    assert text.endswith("last clustering (2026-01-02T03:04:05+00:00):\n"
                         "  duplicate       2 groups,      1 reviewed,      1 to review\n"
                         "  similar         1 groups,      0 reviewed,      1 to review\n"
                         "  identical       1 groups,      0 reviewed,      1 to review\n")
    data = json.loads(invoke("review", "status", "--json").stdout)
    assert data["last_clustering"] == {"saved_at": "2026-01-02T03:04:05+00:00", "tiers": {
        "similar": {"groups": 1, "reviewed": 0, "to_review": 1},
        "duplicate": {"groups": 2, "reviewed": 1, "to_review": 1},
        "identical": {"groups": 1, "reviewed": 0, "to_review": 1}}}
    sidecar.write_text(json.dumps({"groups": {"xyz-1": []}}))
    result = invoke("review", "status", code=1)
    assert result.stderr.count("\n") == 1 and f"{sidecar} is damaged: 'xyz-1'" in result.stderr
