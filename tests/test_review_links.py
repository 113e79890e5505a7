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
from typer.testing import CliRunner

from core.duplicates.review import Decisions, PairInput, linked_products, product_key
from core.duplicates.groups import Items
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
