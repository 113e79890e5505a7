"""A StoreHost on a small server in this process (a thread), for tests of the wire protocol
without a whole search UI; tests/test_shared_store.py runs the real UI in another process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(stores, write_lock: threading.Lock | None = None, bound_host: str = "127.0.0.1"):
    """Serve `stores` (EdgeStores held here) on a free port; yields the StoreHost."""
    import uvicorn
    from starlette.applications import Starlette

    from core.store.host import StoreHost

    app = Starlette()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=bound_host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.02)
    host = StoreHost(stores, write_lock or threading.Lock(), bound_host).mount(app, port)
    try:
        yield host
    finally:
        host.close()
        server.should_exit = True
        thread.join(timeout=10)
