"""core/app.py (open_app: parts built on first use, closed in reverse order) and the option
enums of core/domain/options.py (every name listed once; unknown values refused)."""

from __future__ import annotations

import pytest

from core.app import open_app
from core.domain.options import REVIEW_ORDER, Level, Linkage, ReportFormat, Scope, Tier, choices, parse_formats
from core.duplicates.groups import ClusterSettings
from tests.conftest import BlobDetector


def test_tiers_carry_their_prefix_and_payload_key():
    assert [(t.value, t.prefix, t.payload_key) for t in Tier] == [
        ("identical", "idt", "group_identical"), ("phash", "phs", "group_phash"),
        ("duplicate", "dup", "group_duplicate"), ("similar", "sim", "group_similar")]
    assert Tier.of_group("phs-0123456789") is Tier.PHASH and set(REVIEW_ORDER) == set(Tier)
    assert f"{Tier.SIMILAR:<8}|" == "similar |" and Tier.SIMILAR == "similar"
    with pytest.raises(ValueError, match="'zzz-1' is not a duplicate group id"):
        Tier.of_group("zzz-1")  # no silent fallback to `similar`


def test_options_refuse_unknown_values():
    assert choices(Scope) == ["all", "cross-factory", "within-factory"]
    assert parse_formats(" json, collage ") == [ReportFormat.JSON, ReportFormat.COLLAGE]
    with pytest.raises(ValueError, match="choose from json, csv, folders, collage"):
        parse_formats("json,pdf")
    settings = ClusterSettings(scope="cross-factory", level="product", linkage="complete")
    assert (settings.scope, settings.level, settings.linkage) == (Scope.CROSS_FACTORY, Level.PRODUCT, Linkage.COMPLETE)
    for bad in ({"scope": "everything"}, {"level": "photo"}, {"linkage": "average"}, {"representative": "biggest"}):
        with pytest.raises(ValueError):
            ClusterSettings(**bad)


def test_open_app_builds_on_first_use_and_closes_in_reverse(settings, tiny_embedder, monkeypatch):
    import core.app as wiring

    closed = []
    opened = []

    class Recorded:
        def __init__(self, store, name):
            self.store, self.name = store, name

        def __getattr__(self, attr):
            return getattr(self.store, attr)

        def close(self):
            closed.append(self.name)
            self.store.close()

    real_open_store = wiring.open_store

    def open_store(*args, **kwargs):
        opened.append("store")
        return Recorded(real_open_store(*args, **kwargs), "store")

    class Head:  # stands in for PROJECTION_HEAD's index: its own store, opened beside the main one
        def __init__(self):
            opened.append("head")
            self.store = Recorded(type("HeadStore", (), {"close": lambda self: None})(), "head")

    monkeypatch.setattr(wiring, "open_store", open_store)
    monkeypatch.setattr(wiring, "open_head_index", lambda settings, store, write=False: Head())
    with open_app(settings, embedder=tiny_embedder, detector=BlobDetector()) as app:
        assert opened == []  # nothing is built before it is used
        assert app.search.embedder is app.ingest.embedder is tiny_embedder  # parts are shared
        assert app.search.head_index is app.ingest.head_index is app.head_index
        assert app.store is app.store and opened == ["store", "head"]
    assert closed == ["head", "store"]  # last opened, first closed
    # The lock is released: the store opens again (a second, independent app).
    with open_app(settings) as again:
        assert again.store.count() == 0


def test_open_app_closes_what_it_opened_when_the_block_fails(settings, tiny_embedder):
    with pytest.raises(RuntimeError, match="boom"), open_app(settings, embedder=tiny_embedder) as app:
        store = app.store
        raise RuntimeError("boom")
    with open_app(settings) as again:  # the embedded store's lock was released by the exit
        assert again.store.location == store.location


def test_open_app_refuses_a_part_it_does_not_have(settings):
    with pytest.raises(TypeError, match="no part named embedderr"):
        with open_app(settings, embedderr=None):
            pass


def test_preload_loads_every_model_once(settings):
    loads = []

    class Model:
        def __init__(self, name):
            self.name = name

        def load(self):
            loads.append(self.name)

    with open_app(settings, embedder=Model("clip"), detector=Model("yolo"), background_remover=None) as app:
        app.preload()
    assert sorted(loads) == ["clip", "yolo"]
