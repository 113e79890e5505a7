"""`ingest eval` end to end on generated photos with the tiny real CLIP."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


def test_eval_of_the_index_with_text_queries_and_a_report(cli_env, tmp_path):
    catalogue = make_catalogue(tmp_path / "shoes", factories=2, products_per_factory=4, variants_per_product=2)
    for factory in ("factory_a", "factory_b"):
        assert runner.invoke(app, ["add", str(catalogue.factory_dir(factory))]).exit_code == 0
    queries = tmp_path / "queries.csv"
    queries.write_text("text,product_id\nred boot,A100\nwhite sneaker,B102\nunknown,ZZZ\n")
    report = tmp_path / "eval.md"
    result = runner.invoke(app, ["eval", "--queries", str(queries), "--report", str(report), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["crops"] == 24 and data["photo"]["queries"] == 24  # every photo has 2 siblings
    assert set(data["photo"]["per_factory"]) == {"factory_a", "factory_b"}
    for key in ("P@1", "R@5", "mAP", "nDCG@10"):
        assert 0.0 <= data["photo"]["overall"][key] <= 1.0
    assert data["photo"]["overall"]["R@10"] >= data["photo"]["overall"]["R@5"] >= data["photo"]["overall"]["R@1"]
    assert data["text"]["queries"] == 2  # ZZZ is in no product
    text = report.read_text()
    assert text.startswith("# Retrieval evaluation") and "### photo queries (24 crops)" in text


def test_eval_compares_models_without_touching_the_index(cli_env, tmp_path, tiny_clip_dir):
    import shutil

    catalogue = make_catalogue(tmp_path / "shoes", factories=1, products_per_factory=4, variants_per_product=2)
    assert runner.invoke(app, ["add", str(catalogue.factory_dir("factory_a"))]).exit_code == 0
    before = json.loads(runner.invoke(app, ["stats", "--json"]).stdout)
    other = tmp_path / "other-clip"
    shutil.copytree(tiny_clip_dir, other)
    result = runner.invoke(app, ["eval", "--model", str(tiny_clip_dir), "--model", str(other), "--sample", "9",
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["sample_crops"] == 9  # three whole products of three photos
    a, b = (data["models"][str(m)]["photo"] for m in (tiny_clip_dir, other))
    assert a == b  # the same weights under two names give the same numbers
    assert json.loads(runner.invoke(app, ["stats", "--json"]).stdout) == before


def test_eval_on_an_empty_index_and_bad_queries_file(cli_env, tmp_path):
    result = runner.invoke(app, ["eval"])
    assert result.exit_code == 1 and "Nothing indexed" in result.stderr
    bad = tmp_path / "q.csv"
    bad.write_text("query,sku\nx,y\n")
    result = runner.invoke(app, ["eval", "--queries", str(bad)])
    assert result.exit_code == 1 and "line 1: need columns text,product_id" in result.stderr


def test_eval_with_user_pairs(cli_env, tmp_path):
    catalogue = make_catalogue(tmp_path / "shoes", factories=2, products_per_factory=3, variants_per_product=1,
                               shared_products=1)
    for factory in ("factory_a", "factory_b"):
        assert runner.invoke(app, ["add", str(catalogue.factory_dir(factory))]).exit_code == 0
    # The shared design is one shoe sold by both factories: link its four photos across factories.
    shared = [p for p in catalogue.photos if p.product_id in ("A100", "B100")]
    pairs = tmp_path / "pairs.csv"
    rows = ["a,b,same"] + [f"{shared[0].path},{p.path},1" for p in shared[1:]] + \
        [f"{catalogue.photos[2].path},{catalogue.photos[3].path},0"]
    pairs.write_text("\n".join(rows) + "\n")
    data = json.loads(runner.invoke(app, ["eval", "--pairs", str(pairs), "--json"]).stdout)
    assert data["photo"]["queries"] == 4  # only the linked photos are queries; the rest are distractors
    assert set(data["photo"]["per_factory"]) == {"factory_a", "factory_b"}
    # 3 relevant each among 11 candidates: the top 10 misses at most one of them.
    assert data["photo"]["overall"]["R@10"] >= 2 / 3 - 1e-4
    bad = tmp_path / "bad.csv"
    bad.write_text("left,right\nx,y\n")
    result = runner.invoke(app, ["eval", "--pairs", str(bad)])
    assert result.exit_code == 1 and "line 1: need columns a,b[,same]" in result.stderr
