"""A --factory that the index does not hold stops every command that filters by factory with
one line naming the known factories and close names, instead of an empty, successful answer."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from core.catalogue.folders import check_known_factories
from core.errors import UnknownFactory
from ingest.cli import app
from tools.sample_catalogue import make_catalogue

runner = CliRunner()


@pytest.fixture
def indexed(cli_env, monkeypatch):
    monkeypatch.setenv("BATCH_SIZE", "8")
    catalogue = make_catalogue(cli_env / "shoes", factories=2, products_per_factory=3, variants_per_product=1)
    result = runner.invoke(app, ["add", str(catalogue.factory_dir("factory_a")), str(catalogue.factory_dir("factory_b"))])
    assert result.exit_code == 0, result.output
    return cli_env


def _points() -> int:
    return json.loads(runner.invoke(app, ["stats", "--json"]).stdout)["points"]


@pytest.mark.parametrize("command", [
    ["search", "--text", "boot"],
    ["search", "--text", "boot", "--factory", "factory_a"],  # one known, one not
    ["remove", "--yes"],
    ["remove", "--dry-run"],
    ["cluster", "--output", "{tmp}/report"],
    ["eval"],
    ["tune", "--epochs", "1"],
    ["export", "{tmp}/out.jsonl.gz"],
])
def test_unknown_factory_is_one_line_with_the_known_ones(indexed, command):
    args = [a.replace("{tmp}", str(indexed)) for a in command] + ["--factory", "Factory_B"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stderr == ("error: No factory 'Factory_B' in the index. Did you mean 'factory_b'? "
                             "Known factories: factory_a, factory_b.\n")
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["error"].startswith("No factory 'Factory_B'")
    assert _points() == 12  # nothing removed
    assert not (indexed / "report").exists() and not (indexed / "out.jsonl.gz").exists()


def test_cluster_representative_factory_is_checked_too(indexed):
    result = runner.invoke(app, ["cluster", "--representative", "factory:factory-a", "--output", str(indexed / "r")])
    assert result.exit_code == 1 and "No factory 'factory-a' in the index. Did you mean 'factory_a'?" in result.stderr


def test_known_factory_still_filters(indexed):
    hits = json.loads(runner.invoke(app, ["search", "--text", "boot", "--factory", "factory_b", "--json"]).stdout)["hits"]
    assert hits and {h["payload"]["factory"] for h in hits} == {"factory_b"}


def test_unknown_factory_on_an_empty_index(cli_env):
    result = runner.invoke(app, ["remove", "--factory", "factory_a", "--yes"])
    assert result.exit_code == 1
    assert "No factory 'factory_a' in the index: it holds no photos yet" in result.stderr


def test_suggestions():
    known = ["acme_shoes", "factory_a", "factory_b"] + [f"f{i:02d}" for i in range(30)]
    with pytest.raises(UnknownFactory) as typo:
        check_known_factories(["factory_c", "acme"], known)
    message = str(typo.value)
    assert message.startswith("No factories 'factory_c', 'acme' in the index. Did you mean 'factory_a' or "
                              "'factory_b' for 'factory_c'? Did you mean 'acme_shoes' for 'acme'?")
    assert message.endswith("f18 and 13 more (ingest stats).")  # long lists are cut
    check_known_factories(["factory_a"], known)  # known: no error
    check_known_factories(None, [])
