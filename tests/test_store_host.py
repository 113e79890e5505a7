"""core/store/host.py in one process: the UI's handlers over a held store, served on a small
server; RemoteStores reach it as another process would (tests/test_shared_store.py runs the
real search-ui and CLI as separate processes)."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import StoreLocked, StoreUnavailable
from core.store.host import RemoteStore, _is_local_client, connect_url, open_embedded
from tests.store_host_server import serving


@pytest.fixture
def host(handlers):
    """The handlers' store served with the handlers' own write lock, as search-ui does."""
    with serving([handlers.store], handlers._ingest_lock) as served:
        handlers.writer_elsewhere = served.remote_writer
        yield served


def _open(handlers, **kwargs):
    return open_embedded(handlers.settings.embedded_store_dir, handlers.settings.qdrant_collection, **kwargs)


def test_reads_go_through_the_holder(host, handlers):
    remote = _open(handlers)
    try:
        assert isinstance(remote, RemoteStore) and remote.location == handlers.store.location
        assert remote.facet("factory") == handlers.store.facet("factory")
        assert set(remote.facet("factory")) == {"factory_a", "factory_b", "factory_c"}
        assert remote.count() == handlers.store.count() > 0 and remote.info() == handlers.store.info()
    finally:
        remote.close()


def test_a_write_needs_the_lease(host, handlers):
    before = handlers.store.count()
    reader = _open(handlers)
    try:
        with pytest.raises(StoreUnavailable, match="without the write lease"):
            reader.delete([p.id for p in reader.scroll({"factory": ["factory_a"]})])
    finally:
        reader.close()
    assert handlers.store.count() == before


def test_the_ui_says_busy_while_a_command_writes_and_carries_on_after(host, handlers, tmp_path):
    from tests.conftest import two_shoes_photo

    writer = _open(handlers, write=True)
    try:
        photo = two_shoes_photo(tmp_path / "up" / "new.jpg")
        message = handlers.add_photos([str(photo)], "factory_new")
        assert message.startswith("⚠️ The index is busy: `ingest` command process ") and "is writing to it" in message
        assert handlers.find_duplicates().status.startswith("⚠️ The index is busy")
        assert handlers.search_text("boot", top_k=3).hits  # searches go on
        writer.delete([p.id for p in writer.scroll({"factory": ["factory_c"]})])
    finally:
        writer.close()
    assert set(handlers.store.facet("factory")) == {"factory_a", "factory_b"}  # the UI sees the write at once
    for _ in range(100):  # the holder notices the closed connection within moments
        if host.remote_writer() is None:
            break
        time.sleep(0.05)
    assert "factory\\_new:** 1 photos added" in handlers.add_photos([str(photo)], "factory_new")


def test_a_busy_ui_is_waited_for_like_a_busy_lock(host, handlers):
    told, held = [], [True]

    def upload_done():
        held[0] = False
        handlers._ingest_lock.release()

    handlers._ingest_lock.acquire()  # an upload or a duplicate search in the UI
    try:
        with pytest.raises(StoreLocked, match=r"is busy: search-ui \(process \d+\) is adding uploaded photos or "
                                              r"finding duplicates. Wait for it to finish \(--wait"):
            _open(handlers, write=True)
        threading.Timer(0.5, upload_done).start()
        writer = _open(handlers, write=True, wait=30, on_wait=lambda holder, seconds: told.append((holder, seconds)))
        assert not held[0]  # granted once the UI let go
        writer.close()
    finally:
        if held[0]:
            upload_done()
    assert len(told) == 1 and told[0][1] == 30 and "(search-ui)" in told[0][0]


def test_a_second_ui_on_a_served_store_is_refused(host, handlers):
    from core.app import open_app
    from search_ui.app import create_handlers

    with pytest.raises(StoreLocked, match=r"is already served by search-ui \(process \d+\) at http://127.0.0.1:\d+"), \
            open_app(handlers.settings) as app:
        create_handlers(app, preload=False)


def test_a_collection_the_holder_does_not_hold_is_named(host, handlers):
    from core.store.host import find_host

    with pytest.raises(StoreUnavailable, match="not collection 'other' \\(it serves shoes\\)"):
        RemoteStore.connect(find_host(handlers.settings.embedded_store_dir, "shoes"), "other")


@pytest.mark.parametrize("bound, url", [("127.0.0.1", "http://127.0.0.1:7860"), ("0.0.0.0", "http://127.0.0.1:7860"),
                                        ("localhost", "http://127.0.0.1:7860"), ("::", "http://[::1]:7860"),
                                        ("192.168.1.5", "http://192.168.1.5:7860")])
def test_connect_url(bound, url):
    assert connect_url(bound, 7860) == url


@pytest.mark.parametrize("client, bound, allowed", [
    ("127.0.0.1", "0.0.0.0", True), ("::1", "0.0.0.0", True), ("::ffff:127.0.0.1", "::", True),
    ("127.0.0.5", "127.0.0.1", True), ("192.168.1.5", "192.168.1.5", True),
    ("192.168.1.9", "192.168.1.5", False), ("192.168.1.9", "0.0.0.0", False), ("10.0.0.1", "::", False),
    ("", "0.0.0.0", False), ("testclient", "127.0.0.1", False)])
def test_only_local_clients(client, bound, allowed):
    assert _is_local_client(client, bound) is allowed


def test_a_collection_beside_a_served_one_shares_the_connection(tmp_path):
    """RemoteStore.beside (the projection head's index): served by the same holder, reached through
    the same connection; closing the first store closes it."""
    from core.store.edge import EdgeStore

    holders = [EdgeStore(tmp_path / "edge", "shoes"), EdgeStore(tmp_path / "edge", "shoes_head")]
    try:
        holders[1].ensure_collection("head", 4)
        with serving(holders):
            remote = open_embedded(tmp_path / "edge", "shoes", write=True)
            head = remote.beside("shoes_head")
            try:
                assert isinstance(head, RemoteStore) and head.link is remote.link and not head.servable
                assert head.holder == remote.holder and head.info().model == "head"
            finally:
                head.close()
                remote.close()
    finally:
        for holder in holders:
            holder.close()
