"""Products linked across factories in the review (`same product across factories`) as labels and
in search: `ingest eval --links`, `ingest tune --links`, and search's collapse of linked products.
Real CLI, tiny real CLIP, real Edge store; the generated catalogue sells its first designs in
every factory (factory_a/A100, factory_b/B100, factory_c/C100 are one shoe)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from core.duplicates.groups import Items
from core.duplicates.review import Decisions, PairInput, linked_products, product_key
from core.quality.evaluate import evaluate_links, labels_from_links
from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()
FACTORIES = ("factory_a", "factory_b", "factory_c")
TRUE_LINKS = [["factory_a/A100", "factory_b/B100", "same"], ["factory_b/B100", "factory_c/C100", "same"],
              ["factory_a/A101", "factory_b/B101", "same"], ["factory_c/C101", "factory_b/B101", "same"]]
# the same shape of links between products that are different designs
WRONG_LINKS = [["factory_a/A100", "factory_b/B102", "same"], ["factory_b/B102", "factory_c/C103", "same"],
               ["factory_a/A103", "factory_b/B101", "same"], ["factory_c/C102", "factory_b/B101", "same"]]


def invoke(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def as_json(*args: str) -> dict:
    return json.loads(invoke(*args, "--json").stdout)


def link(tmp_path: Path, rows: list[list[str]], name: str = "links.csv") -> None:
    """Link products through the review's import (a fresh decisions file each time)."""
    Decisions(tmp_path / "data", "shoes").path.unlink(missing_ok=True)
    path = tmp_path / name
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "decision"])
        writer.writerows(rows)
    invoke("review", "import", str(path))


@pytest.fixture
def indexed(cli_env, tmp_path):
    catalogue = make_catalogue(tmp_path / "shoes", factories=3, products_per_factory=4, variants_per_product=2)
    invoke("add", *(str(catalogue.factory_dir(f)) for f in FACTORIES))
    return catalogue, tmp_path


# --------------------------------------------------------------------------- labels


def test_linked_products_and_their_labels(tmp_path):
    decisions = Decisions(tmp_path, "shoes")
    a1, b7, c2, d1 = (product_key(*p) for p in (("factory_a", "SKU-1"), ("factory_b", "B-77"), ("factory_c", "C2"),
                                                   ("factory_d", "D1")))
    decisions.record([PairInput(a1, b7, "same"), PairInput(c2, b7, "same"), PairInput(a1, d1, "different")])
    links = linked_products(decisions.load())
    group = ["factory_a/SKU-1", "factory_b/B-77", "factory_c/C2"]
    assert links == {name: group for name in group}  # transitive; a `different` links nothing
    payloads = [{"factory": f, "product_id": p, "photo_sha256": f"{k}"} for k, (f, p) in enumerate(
        [("factory_a", "SKU-1"), ("factory_a", "SKU-1"), ("factory_b", "B-77"), ("factory_c", "C2"),
         ("factory_d", "D1"), ("factory_a", "SKU-2")])]
    items = Items([str(k) for k in range(6)], np.eye(6, dtype=np.float32), payloads)
    labels = labels_from_links(items, links)
    assert labels[:4] == ["linked:factory_a/SKU-1"] * 4 and labels[4:] == ["factory_d/D1", "factory_a/SKU-2"]
    # cross-factory: each linked crop finds the other products' crops, its own product's crops left out
    cross = evaluate_links(items, links)["cross_factory"]
    assert cross.queries == 4 and cross.overall["R@5"] == 1.0
    with pytest.raises(Exception, match="no two of the 3 linked products"):
        evaluate_links(Items(["x"], np.eye(1, dtype=np.float32), [payloads[4]]), links)


# --------------------------------------------------------------------------- ingest eval --links


def test_eval_links_relevance_and_cross_factory_metrics(indexed):
    catalogue, tmp = indexed
    result = invoke("eval", "--links", code=1)  # nothing linked yet: one line, exit 1
    assert result.stderr.count("\n") == 1 and "no products are linked across factories yet" in result.stderr
    assert json.loads(invoke("eval", "--links", "--json", code=1).stdout)["exit_code"] == 1
    base = as_json("eval")
    assert "cross_factory" not in base

    link(tmp, TRUE_LINKS)
    true = as_json("eval", "--links")
    assert true["links"] == {"groups": 2, "products": 6}
    # every crop of the 6 linked products (3 photos each) queries the linked products elsewhere
    assert true["cross_factory"]["queries"] == 18 and true["photo"]["queries"] == 36
    assert set(true["cross_factory"]["per_factory"]) == set(FACTORIES)
    # the same design sold elsewhere now counts as a hit: more of the top 10 is relevant
    assert true["photo"]["overall"]["P@10"] > base["photo"]["overall"]["P@10"]
    text = invoke("eval", "--links").stdout
    assert "### cross-factory queries" in text and "| **all** | 18 |" in text

    link(tmp, WRONG_LINKS, "wrong.csv")  # links between different designs: found far less often
    wrong = as_json("eval", "--links")
    assert wrong["cross_factory"]["queries"] == 18
    assert true["cross_factory"]["overall"]["mAP"] > wrong["cross_factory"]["overall"]["mAP"]
    assert true["cross_factory"]["overall"]["R@10"] > wrong["cross_factory"]["overall"]["R@10"]

    result = invoke("eval", "--links", "--factory", "factory_a", code=1)  # linked products' partners filtered out
    assert result.stderr.count("\n") == 1
    result = invoke("eval", "--links", "--pairs", str(tmp / "links.csv"), code=2)
    assert "--links" in result.output


# --------------------------------------------------------------------------- ingest tune --links


def test_tune_links_learns_linked_products_as_one(indexed):
    catalogue, tmp = indexed
    result = invoke("tune", "--links", "--epochs", "2", "-o", str(tmp / "h.npz"), code=1)
    assert result.stderr.count("\n") == 1 and "no products are linked" in result.stderr
    plain = as_json("tune", "--dim", "8", "--epochs", "2", "-o", str(tmp / "plain.npz"))
    link(tmp, TRUE_LINKS)
    linked = as_json("tune", "--links", "--dim", "8", "--epochs", "2", "-o", str(tmp / "linked.npz"))
    assert linked["links"] == {"groups": 2, "products": 6}
    # 12 products are 8 labels once the 2 groups of 3 are one each: 2 held out, 6 to train on (not 10)
    assert (plain["train_products"], plain["val_products"]) == (10, 2)
    assert (linked["train_products"], linked["val_products"]) == (6, 2)
    from core.quality.tune import ProjectionHead

    assert ProjectionHead.load(tmp / "linked.npz").info.data_hash != ProjectionHead.load(tmp / "plain.npz").info.data_hash
    assert "6 linked products in 2 groups counted as one product each" in invoke(
        "tune", "--links", "--dim", "8", "--epochs", "2", "-o", str(tmp / "again.npz")).stdout


# --------------------------------------------------------------------------- search: collapse linked products


def _group_of(name: str) -> str | None:
    return {"factory_a/A100": "g1", "factory_b/B100": "g1", "factory_c/C100": "g1",
            "factory_a/A101": "g2", "factory_b/B101": "g2", "factory_c/C101": "g2"}.get(name)


def expected_collapse(full: list, top_k: int) -> list[tuple[str, list[tuple[str, float | None]]]]:
    """What collapsing should give, worked out from the uncollapsed ranking: (point id, [(linked
    product, its best score or None)]) per result."""
    out, seen = [], {}
    for hit in full:
        name = f"{hit.factory}/{hit.product_id}"
        group = _group_of(name)
        if group is None:
            out.append((hit.point_id, []))
        elif group not in seen:
            seen[group] = (len(out), name)
            out.append((hit.point_id, []))
    for group, (at, own) in seen.items():
        others = [n for n in ("factory_a/A100", "factory_b/B100", "factory_c/C100", "factory_a/A101", "factory_b/B101",
                              "factory_c/C101") if _group_of(n) == group and n != own]
        best = {n: max((h.score for h in full if f"{h.factory}/{h.product_id}" == n), default=None) for n in others}
        out[at] = (out[at][0], sorted(best.items(), key=lambda kv: (kv[1] is None, -(kv[1] or 0), kv[0])))
    return out[:top_k]


def test_search_service_collapses_linked_products(indexed):
    from core.app import open_app
    from core.settings import load_settings

    catalogue, tmp = indexed
    link(tmp, TRUE_LINKS)
    settings = load_settings()
    with open_app(settings) as app:
        store, service = app.store, app.search
        front = next(p for p in store.scroll() if p.payload["product_id"] == "A100"
                     and p.payload["photo_path"].endswith("front.jpg"))
        full = service.more_like_this(front.id, top_k=36, include_self=True)  # the whole index, ranked
        assert len(full) == 36
        for top_k in (3, 8, 36):
            plain = service.more_like_this(front.id, top_k=top_k, include_self=True)
            collapsed = service.more_like_this(front.id, top_k=top_k, include_self=True, collapse_linked=True)
            names = [f"{h.factory}/{h.product_id}" for h in plain]
            assert sum(_group_of(n) == "g1" for n in names) > 1  # several crops of the linked shoe ...
            got = [(h.point_id, [(p.name, p.score) for p in h.linked]) for h in collapsed]
            want = expected_collapse(full, top_k)
            assert [g[0] for g in got] == [w[0] for w in want]  # ... are one result, the rest moves up
            for (_, linked), (_, wanted) in zip(got, want):
                assert {n for n, _ in linked} == {n for n, _ in wanted}
                best = dict(wanted)  # a linked product's score, when given, is its best crop's
                assert all(s is None or s == pytest.approx(best[n], abs=1e-6) for n, s in linked)
                scores = [s for _, s in linked]
                assert scores == sorted(scores, key=lambda s: (s is None, -(s or 0)))  # best first
            # refilled from further down; all 36 crops are 20 results: 2 groups of 9 crops are 1 each
            assert len(collapsed) == min(top_k, 20)
            if top_k == 36:  # everything fetched: every linked product has its best score
                assert all(s == pytest.approx(dict(w)[n], abs=1e-6) for (_, linked), (_, w) in zip(got, want)
                           for n, s in linked)
            assert collapsed[0].point_id == front.id and {p.name for p in collapsed[0].linked} == {
                "factory_b/B100", "factory_c/C100"}
        # filtered to one factory: the other factories' products are still named, without a score
        [only] = [h for h in service.more_like_this(front.id, where={"factory": ["factory_a"]}, top_k=4,
                                                    include_self=True, collapse_linked=True)
                  if h.product_id == "A100"]
        assert [(p.name, p.score) for p in only.linked] == [("factory_b/B100", None), ("factory_c/C100", None)]
        # every kind of query collapses through the same place
        for hits in (service.search_text("a shoe", top_k=36, collapse_linked=True),
                     service.search_vector(store.retrieve([front.id], with_vectors=True)[0].vector,
                                           top_k=36, collapse_linked=True),
                     service.search_image(Image.open(catalogue.photos[0].path).convert("RGB"), top_k=36,
                                          collapse_linked=True),
                     service.refine([front.id], top_k=36, collapse_linked=True)):
            names = [f"{h.factory}/{h.product_id}" for h in hits]
            assert sum(_group_of(n) == "g1" for n in names) == 1 and sum(_group_of(n) == "g2" for n in names) == 1
            assert len(hits) in (19, 20)  # refine leaves its example out
            assert all(len(h.linked) == 2 for h in hits if _group_of(f"{h.factory}/{h.product_id}"))
        # links changed a moment ago count at once; none: nothing collapses
        Decisions(tmp / "data", "shoes").path.unlink()
        assert [h.point_id for h in service.more_like_this(front.id, top_k=8, include_self=True,
                                                           collapse_linked=True)] == [h.point_id for h in full[:8]]


def test_search_cli_collapse_linked(indexed):
    catalogue, tmp = indexed
    query = str(next(p.path for p in catalogue.photos if p.product_id == "A100" and p.variant == "front"))
    result = invoke("search", "--image", query, "--whole", "--top-k", "20", "--collapse-linked")
    assert "note: no products are linked across factories yet" in result.stderr  # and the hits as usual
    assert "also sold as" not in result.stdout and result.stdout.count("\n") == 20
    link(tmp, TRUE_LINKS)
    plain = as_json("search", "--image", query, "--whole", "--top-k", "20")
    assert "collapse_linked" not in plain and "also_sold_as" not in plain["hits"][0]
    data = as_json("search", "--image", query, "--whole", "--top-k", "20", "--collapse-linked")
    assert data["collapse_linked"] is True and len(data["hits"]) == 20
    products = [f"{h['payload']['factory']}/{h['payload']['product_id']}" for h in data["hits"]]
    assert sum(_group_of(p) == "g1" for p in products) == 1 and sum(_group_of(p) == "g2" for p in products) == 1
    first = data["hits"][0]
    assert first["payload"]["product_id"] == "A100" and first["score"] > 0.999
    assert {(p["factory"], p["product_id"]) for p in first["also_sold_as"]} == {("factory_b", "B100"),
                                                                                ("factory_c", "C100")}
    assert all(p["score"] is not None and p["point_id"] for p in first["also_sold_as"])  # 20 results: 36 crops read
    assert all(h["also_sold_as"] == [] for h in data["hits"] if not _group_of(
        f"{h['payload']['factory']}/{h['payload']['product_id']}"))
    text = invoke("search", "--image", query, "--whole", "--top-k", "20", "--collapse-linked").stdout
    lines = text.splitlines()
    assert lines[0].startswith("  1. 1.0000  factory_a") and "A100" in lines[0]
    also = first["also_sold_as"]
    assert lines[1] == "       also sold as " + ", ".join(f"{p['factory']}/{p['product_id']} ({p['score']:.4f})"
                                                          for p in also)
    assert sum("also sold as" in line for line in lines) == 2 and len(lines) == 22
    # a damaged decisions file: one line, exit 1
    Decisions(tmp / "data", "shoes").path.write_text("{")
    result = invoke("search", "--image", query, "--collapse-linked", code=1)
    assert result.stderr.count("\n") == 1 and "are damaged" in result.stderr
