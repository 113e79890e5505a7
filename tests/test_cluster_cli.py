"""`ingest cluster` end to end: generated photos with near-duplicate variants, tiny real CLIP,
real Edge store; every format written and consistent; ids stable across runs; calibration."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


@pytest.fixture
def indexed(cli_env, tmp_path):
    catalogue = make_catalogue(tmp_path / "shoes", factories=3, products_per_factory=4, variants_per_product=3)
    for factory in ("factory_a", "factory_b", "factory_c"):
        result = runner.invoke(app, ["add", str(catalogue.factory_dir(factory)), "--json"])
        assert result.exit_code == 0, result.output
    # Byte-identical photo sold by two factories: the identical tier.
    copy = catalogue.factory_dir("factory_c") / "COPY" / "front.jpg"
    copy.parent.mkdir()
    copy.write_bytes(catalogue.photos[0].path.read_bytes())
    assert runner.invoke(app, ["add", str(catalogue.factory_dir("factory_c"))]).exit_code == 0
    return catalogue, tmp_path


def _cluster(*args):
    result = runner.invoke(app, ["cluster", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_all_formats_agree(indexed):
    catalogue, tmp = indexed
    out = tmp / "report"
    summary = _cluster("--duplicate-threshold", "0.99", "--similar-threshold", "0.97", "--linkage", "complete",
                       "-o", str(out), "--format", "json,csv,folders,collage")
    groups = json.loads((out / "groups.json").read_text())
    assert summary["items"] == len(catalogue.photos) + 1 == 49
    assert json.loads((out / "summary.json").read_text())["tiers"] == summary["tiers"]
    for tier in ("identical", "phash", "duplicate", "similar"):
        in_tier = [g for g in groups if g["tier"] == tier]
        assert summary["tiers"][tier]["groups"] == len(in_tier)
        assert summary["tiers"][tier]["items_in_groups"] == sum(len(g["member_points"]) for g in in_tier)
    [identical] = [g for g in groups if g["tier"] == "identical"]
    assert {m["factory"] for m in identical["members"]} == {"factory_a", "factory_c"}
    assert any(g["tier"] == "duplicate" for g in groups)
    for g in groups:
        assert g["members"][0] == g["representative"] and g["members"][0]["similarity"] == 1.0
        if g["tier"] != "phash":  # the phash tier groups by perceptual hash; its similarities are only reported
            assert g["min_similarity"] >= {"duplicate": 0.99, "similar": 0.97, "identical": 1.0}[g["tier"]] - 1e-6

    rows = list(csv.DictReader(open(out / "groups.csv")))
    assert len(rows) == sum(len(g["members"]) for g in groups)
    assert {(r["group_id"], r["point_id"]) for r in rows} == {(g["id"], m["point_id"]) for g in groups for m in g["members"]}
    assert sum(r["is_representative"] == "1" for r in rows) == len(groups)

    for g in groups:
        folder = out / f"{g['tier']}_groups" / f"group_{g['id']}"
        files = sorted(p.name for p in folder.iterdir())
        assert len(files) == len(g["members"])
        assert sum(name.startswith("rep_") for name in files) == 1
        sims = sorted(float(name.split("_")[1]) for name in files if name.startswith("sim_"))
        assert sims == sorted(round(m["similarity"], 3) for m in g["members"][1:])
        collage = out / "collages" / f"{g['tier']}_{g['id']}.jpg"
        assert Image.open(collage).size[0] > 500
    assert (out / "collages" / "overview.jpg").is_file()
    unique = list(csv.DictReader(open(out / "unique" / "unique.csv")))
    grouped = {p for g in groups if g["tier"] in ("duplicate", "similar") for p in g["member_points"]}
    assert len(unique) + len(grouped) == summary["items"]
    assert not grouped & {r["point_id"] for r in unique}


def test_group_ids_are_stable_and_stored_in_payloads(indexed):
    catalogue, tmp = indexed
    first = tmp / "r1"
    _cluster("--duplicate-threshold", "0.99", "--similar-threshold", "0.97", "-o", str(first))
    groups = {g["id"]: g for g in json.loads((first / "groups.json").read_text())}
    again = _cluster("--duplicate-threshold", "0.99", "--similar-threshold", "0.97", "-o", str(tmp / "r2"))
    assert all(set(t["status"]) <= {"unchanged"} for t in again["tiers"].values())
    assert set(groups) == {g["id"] for g in json.loads((tmp / "r2" / "groups.json").read_text())}

    from core.settings import Settings
    from core.store.edge import EdgeStore

    settings = Settings()
    store = EdgeStore(settings.embedded_store_dir, settings.qdrant_collection)
    try:
        for group_id, group in groups.items():
            key = {"idt": "group_identical", "phs": "group_phash", "dup": "group_duplicate",
                   "sim": "group_similar"}[group_id[:3]]
            stored = {p.id for p in store.scroll({key: [group_id]})}
            assert stored == set(group["member_points"])
    finally:
        store.close()


def test_cross_factory_scope_and_factory_filter(indexed):
    _, tmp = indexed
    summary = _cluster("--scope", "cross-factory", "--factory", "factory_a", "--factory", "factory_b",
                       "-o", str(tmp / "cross"))
    groups = json.loads((tmp / "cross" / "groups.json").read_text())
    assert summary["items"] == 32
    assert all(len({m["factory"] for m in g["members"]}) >= 2 for g in groups)
    assert {m["factory"] for g in groups for m in g["members"]} <= {"factory_a", "factory_b"}
    matrix = summary["tiers"]["similar"]["factory_overlap"]
    assert matrix["factories"] == ["factory_a", "factory_b"]


def test_product_level(indexed):
    _, tmp = indexed
    _cluster("--level", "product", "--duplicate-threshold", "0.99", "-o", str(tmp / "prod"))
    for g in json.loads((tmp / "prod" / "groups.json").read_text()):
        if g["tier"] != "identical":
            products = [(m["factory"], m["product_id"]) for m in g["members"]]
            assert len(products) == len(set(products))  # one member per product


def test_calibration_meets_the_asked_precision(indexed):
    catalogue, tmp = indexed
    labels = tmp / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "same"])
        photos = catalogue.photos
        for i in range(0, len(photos) - 1):
            a, b = photos[i], photos[i + 1]
            writer.writerow([a.path, b.path, int(a.design == b.design)])
        writer.writerow(["no/such.jpg", photos[0].path, 1])
    result = runner.invoke(app, ["cluster", "--calibrate", str(labels), "--target-precision", "0.9",
                                 "-o", str(tmp / "cal"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["unmatched"] == ["line 49: no/such.jpg"] and report["pairs"] == 47
    assert (tmp / "cal" / "pr_curve.png").stat().st_size > 5000
    curve = report["curve"]
    assert all(a["recall"] >= b["recall"] for a, b in zip(curve, curve[1:]))
    if report["threshold_for_target"] is not None:
        chosen = next(r for r in curve if r["threshold"] == report["threshold_for_target"])
        assert chosen["precision"] >= 0.9


def test_cluster_usage_errors(indexed):
    assert runner.invoke(app, ["cluster", "--scope", "everything"]).exit_code == 2
    assert runner.invoke(app, ["cluster", "--representative", "biggest"]).exit_code == 2
    bad = runner.invoke(app, ["cluster", "--format", "json,pdf", "-o", str(indexed[1] / "x")])
    assert bad.exit_code == 2 and "choose from json, csv, folders, collage" in bad.output
    assert not (indexed[1] / "x").exists()


def test_cross_factory_complete_linkage_groups_hold_two_factories(indexed):
    """Complete linkage used to split a cross-factory component into single-factory pieces."""
    _, tmp = indexed
    for dup, sim in (("0.995", "0.98"), ("0.99", "0.97"), ("0.95", "0.85")):
        out = tmp / f"cross-{dup}"
        _cluster("--scope", "cross-factory", "--linkage", "complete", "--duplicate-threshold", dup,
                 "--similar-threshold", sim, "-o", str(out))
        groups = json.loads((out / "groups.json").read_text())
        assert groups, (dup, sim)
        for g in groups:
            assert len({m["factory"] for m in g["members"]}) >= 2, (dup, sim, g["id"])
