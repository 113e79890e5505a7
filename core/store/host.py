"""One embedded store, several processes: the process holding it serves it to the others.

Qdrant Edge lets one process open a shard (EdgeStore holds core/store/lock.py's lock for that).
The search UI holds the store for as long as it runs, so it also serves the store to other
processes of the same user: `StoreHost` adds a few routes to the UI's own web server, and
`RemoteStore` implements the `Store` contract over them. A CLI command that finds the store held by a serving UI runs
its usual code with a `RemoteStore` instead of an `EdgeStore`: the same service calls, progress
bars, output and exit codes, only the store operations travel (one code path, nothing to drift).

Who may call: requests must come from this machine (loopback, or the address the UI is bound
to) and carry a random token that the UI writes, with the URL and its process id, into
`<collection>.host` beside the store's lock file, readable by its owner only (0600). The UI's
login does not apply to these routes and they give nothing without the token.

Writes: a writing command (add, remove, import, reproject, cluster) first takes a *lease*: the
UI's own write lock (the one its uploads and duplicate searches hold), for as long as the
command's connection stays open. The lease ends when the command closes the store, exits or is
killed (the server sees the connection drop), so a crash never leaves the UI locked. A busy lease
is waited for like a busy store lock (`--wait` / STORE_LOCK_WAIT). Searches never need it.

Routes (prefix /_store/v1; JSON bodies; streamed answers are newline-delimited JSON):
  GET  ping                           -> {"pid", "collections": {name: location}}
  POST lease {"wait", "holder"}       -> stream: {"busy": what}?, then {"granted": id} (held until
                                         the connection closes) or {"timeout": what}
  POST call/{collection}/{method}     -> {"result"} | {"error": {"type", "message"}}
  POST scroll/{collection}            -> stream: {"points": [...]}*, then {"end": true} or {"error"}
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import errors
from core.domain.types import Hit
from core.errors import ShoeSearchError, StoreLocked, StoreUnavailable
from core.store.base import CollectionInfo, Contains, Store, StoredPoint, Where
from core.store.edge import EdgeStore

PREFIX = "/_store/v1"
PROTOCOL = 1
LEASE_HEADER = "X-Store-Lease"
KEEPALIVE_SECONDS = 5.0
POLL_SECONDS = 0.05


def host_file(directory: Path, collection: str) -> Path:
    """Where the holder of `collection` records its URL and token (beside `<collection>.lock`)."""
    return Path(directory) / f"{collection}.host"


def _lock_holder_pid(directory: Path, collection: str) -> int | None:
    """The process id recorded in the store's lock file (store.py writes "PID (program)")."""
    try:
        text = (Path(directory) / f"{collection}.lock").read_text(errors="replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- wire format


def _vector_out(vector) -> str | None:
    if vector is None:
        return None
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _vector_in(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def _point_out(point: StoredPoint) -> dict[str, Any]:
    return {"id": point.id, "payload": point.payload, "vector": _vector_out(point.vector)}


def _point_in(data: dict[str, Any]) -> StoredPoint:
    return StoredPoint(str(data["id"]), dict(data["payload"] or {}), _vector_in(data.get("vector")))


def _where_out(where: Where | None) -> dict[str, Any] | None:
    if not where:
        return None
    return {key: {"contains": values.text} if isinstance(values, Contains) else list(values)
            for key, values in where.items()}


def _where_in(data: dict[str, Any] | None) -> Where | None:
    if not data:
        return None
    return {key: Contains(values["contains"]) if isinstance(values, dict) else list(values)
            for key, values in data.items()}


def _info_out(info: CollectionInfo | None) -> dict[str, Any] | None:
    return None if info is None else {"model": info.model, "dimension": info.dimension,
                                      "schema_version": info.schema_version, "text_model": info.text_model}


def _info_in(data: dict[str, Any] | None) -> CollectionInfo | None:
    return None if data is None else CollectionInfo(data["model"], int(data["dimension"]),
                                                    int(data["schema_version"]), str(data.get("text_model", "")))


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


def _error_out(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ShoeSearchError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "StoreUnavailable", "message": f"{type(exc).__name__}: {exc}"}


def _error_in(error: dict[str, Any], where: str) -> ShoeSearchError:
    """The host's error as the same exception class here (a user error stays a user error)."""
    kind = getattr(errors, str(error.get("type")), None)
    message = str(error.get("message", ""))
    if isinstance(kind, type) and issubclass(kind, ShoeSearchError):
        return kind(message)
    return StoreUnavailable(f"{where} failed: {message}")


# --------------------------------------------------------------------------- serving side

WRITES = frozenset({"ensure_collection", "upsert", "set_payload", "delete", "optimize"})


def _dispatch(store: Store, method: str, args: dict[str, Any]) -> Any:
    """Run one Store method with JSON arguments; the result as JSON."""
    if method == "info":
        return _info_out(store.info())
    if method == "ensure_collection":
        text_model = args.get("text_model")
        return _info_out(store.ensure_collection(str(args["model"]), int(args["dimension"]),
                                                 None if text_model is None else str(text_model)))
    if method == "upsert":
        return store.upsert([_point_in(p) for p in args["points"]])
    if method == "retrieve":
        return [_point_out(p) for p in store.retrieve([str(i) for i in args["ids"]], bool(args.get("with_vectors")))]
    if method == "set_payload":
        return store.set_payload([str(i) for i in args["ids"]], dict(args["payload"]))
    if method == "delete":
        return store.delete([str(i) for i in args["ids"]])
    if method == "query":
        hits = store.query(_vector_in(args["vector"]), where=_where_in(args.get("where")), limit=int(args["limit"]),
                           score_threshold=args.get("score_threshold"), exact=args.get("exact"))
        return [{"id": h.point_id, "score": h.score, "payload": h.payload} for h in hits]
    if method == "recommend":
        hits = store.recommend([_vector_in(v) for v in args["positive"]], [_vector_in(v) for v in args["negative"]],
                               where=_where_in(args.get("where")), limit=int(args["limit"]),
                               score_threshold=args.get("score_threshold"), strategy=str(args["strategy"]))
        return [{"id": h.point_id, "score": h.score, "payload": h.payload} for h in hits]
    if method == "count":
        return store.count(_where_in(args.get("where")))
    if method == "facet":
        return store.facet(str(args["key"]), _where_in(args.get("where")))
    if method == "optimize":
        return store.optimize()
    if method == "check_writable":
        return store.check_writable(str(args.get("doing") or "writing to the index"))
    raise KeyError(method)


def _is_local_client(address: str, bound: str) -> bool:
    """A request from this machine: loopback, or the specific address the server is bound to
    (a connection to it from this machine comes from that address; from elsewhere it cannot)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    try:
        own = ipaddress.ip_address(bound)
    except ValueError:
        return False
    return not own.is_unspecified and ip == own


def connect_url(bound_host: str, port: int) -> str:
    """The URL another local process uses to reach a server bound to `bound_host`."""
    host = bound_host.strip() or "127.0.0.1"
    if host in ("localhost", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class StoreHost:
    """Serves the embedded stores this process holds to the other processes of the same user."""

    def __init__(self, stores: Sequence[EdgeStore], write_lock: threading.Lock, bound_host: str,
                 name: str = "search-ui") -> None:
        self.stores = {store.collection: store for store in stores}
        self.directory = stores[0].directory
        self.write_lock = write_lock
        self.bound_host = bound_host
        self.name = name
        self.token = secrets.token_urlsafe(32)
        self.url = ""
        self._lease: tuple[str, str] | None = None  # (lease id, holder) while a remote command writes
        self._written: list[Path] = []

    # --------------------------------------------------------------- routes

    def mount(self, app, port: int) -> StoreHost:
        """Add the routes to a running FastAPI app (the UI's) and publish the host files."""
        # Plain Starlette routes (the endpoint gets the request): no FastAPI validation or schema.
        app.add_route(f"{PREFIX}/ping", self._ping, methods=["GET"], include_in_schema=False)
        app.add_route(f"{PREFIX}/lease", self._lease_route, methods=["POST"], include_in_schema=False)
        app.add_route(f"{PREFIX}/call/{{collection}}/{{method}}", self._call, methods=["POST"],
                      include_in_schema=False)
        app.add_route(f"{PREFIX}/scroll/{{collection}}", self._scroll, methods=["POST"], include_in_schema=False)
        self.url = connect_url(self.bound_host, port)
        self._publish()
        atexit.register(self.close)
        return self

    def _denied(self, request):
        """None for a local request with the token, else the response refusing it (403 / 401)."""
        from starlette.responses import JSONResponse

        client = request.client.host if request.client else ""
        if not _is_local_client(client, self.bound_host):
            return JSONResponse({"error": {"type": "Forbidden", "message": "only from this machine"}}, 403)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return JSONResponse({"error": {"type": "Unauthorized", "message": "missing or wrong token"}}, 401)
        return None

    def _store(self, collection: str):
        from starlette.responses import JSONResponse

        store = self.stores.get(collection)
        if store is None:
            return None, JSONResponse({"error": {"type": "StoreUnavailable", "message": (
                f"{self.name} (process {os.getpid()}) does not hold collection '{collection}' "
                f"(it holds {', '.join(sorted(self.stores))})")}}, 404)
        return store, None

    async def _ping(self, request):
        from starlette.responses import JSONResponse

        denied = self._denied(request)
        if denied is not None:
            return denied
        return JSONResponse({"protocol": PROTOCOL, "pid": os.getpid(), "name": self.name,
                             "collections": {name: store.location for name, store in self.stores.items()}})

    def busy_with(self) -> str:
        """What holds the write lock now, in words."""
        lease = self._lease
        if lease is not None:
            return f"process {lease[1]} is writing to it through {self.name} (process {os.getpid()})"
        return f"{self.name} (process {os.getpid()}) is adding uploaded photos or finding duplicates"

    async def _lease_route(self, request):
        import asyncio

        from starlette.responses import StreamingResponse

        denied = self._denied(request)
        if denied is not None:
            return denied
        try:
            args = json.loads(await request.body() or b"{}")
            wait, holder = max(0.0, float(args.get("wait", 0.0))), str(args.get("holder", "?"))[:200]
        except (ValueError, TypeError, AttributeError):
            wait, holder = 0.0, "?"

        async def events():
            acquired = False
            try:
                if not self.write_lock.acquire(blocking=False):
                    yield _line({"busy": self.busy_with(), "holder": self._holder_text()})
                    deadline = time.monotonic() + wait
                    while True:
                        await asyncio.sleep(POLL_SECONDS)
                        if self.write_lock.acquire(blocking=False):
                            break
                        if time.monotonic() >= deadline:
                            yield _line({"timeout": self.busy_with()})
                            return
                # No await between acquiring and noting it: a cancellation cannot lose the lock.
                acquired = True
                lease_id = secrets.token_hex(16)
                self._lease = (lease_id, holder)
                yield _line({"granted": lease_id})
                while True:  # held until the client disconnects (Starlette then cancels this)
                    await asyncio.sleep(KEEPALIVE_SECONDS)
                    yield b"\n"
            finally:
                if acquired:
                    self._lease = None
                    self.write_lock.release()

        return StreamingResponse(events(), media_type="application/x-ndjson")

    def remote_writer(self) -> str | None:
        """The command holding the write lease, in words ("process 123 (ingest add)"), or None."""
        lease = self._lease
        return None if lease is None else f"`ingest` command process {lease[1]}"

    def _holder_text(self) -> str:
        lease = self._lease
        return lease[1] if lease is not None else f"{os.getpid()} ({self.name})"

    def _lease_ok(self, request) -> bool:
        lease = self._lease
        given = request.headers.get(LEASE_HEADER.lower(), "")
        return lease is not None and hmac.compare_digest(given.encode(), lease[0].encode())

    async def _call(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, Response

        denied = self._denied(request)
        if denied is not None:
            return denied
        collection, method = request.path_params["collection"], request.path_params["method"]
        store, missing = self._store(collection)
        if missing is not None:
            return missing
        if method in WRITES and not self._lease_ok(request):
            return JSONResponse({"error": {"type": "StoreUnavailable", "message": (
                f"a write ({method}) to {store.location} without the write lease")}}, 409)
        try:
            args = json.loads(await request.body() or b"{}")
            result = await run_in_threadpool(_dispatch, store, method, args)
        except KeyError as exc:
            return JSONResponse({"error": {"type": "StoreUnavailable", "message": f"bad request: {exc}"}}, 400)
        except Exception as exc:  # the caller raises the same error class
            return JSONResponse({"error": _error_out(exc)}, 422 if isinstance(exc, ShoeSearchError) else 500)
        return Response(json.dumps({"result": result}, ensure_ascii=False), media_type="application/json")

    async def _scroll(self, request):
        from starlette.responses import StreamingResponse

        denied = self._denied(request)
        if denied is not None:
            return denied
        store, missing = self._store(request.path_params["collection"])
        if missing is not None:
            return missing
        args = json.loads(await request.body() or b"{}")
        where, with_vectors = _where_in(args.get("where")), bool(args.get("with_vectors"))
        batch_size = max(1, min(int(args.get("batch_size", 512)), 4096))

        def lines() -> Iterator[bytes]:  # a plain iterator: Starlette runs it in its thread pool
            batch: list[dict[str, Any]] = []
            try:
                for point in store.scroll(where, with_vectors=with_vectors, batch_size=batch_size):
                    batch.append(_point_out(point))
                    if len(batch) >= batch_size:
                        yield _line({"points": batch})
                        batch = []
                if batch:
                    yield _line({"points": batch})
                yield _line({"end": True})
            except Exception as exc:
                yield _line({"error": _error_out(exc)})

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # --------------------------------------------------------------- host files

    def _publish(self) -> None:
        """Write `<collection>.host` (0600) for every served collection, atomically."""
        record = json.dumps({"protocol": PROTOCOL, "pid": os.getpid(), "name": self.name, "url": self.url,
                             "token": self.token}).encode()
        for collection in self.stores:
            path = host_file(self.directory, collection)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, record)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._written.append(path)

    def close(self) -> None:
        """Remove the host files (if still ours); the routes die with the server."""
        while self._written:
            path = self._written.pop()
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("token") == self.token:
                    path.unlink()


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class HostRecord:
    """What a `<collection>.host` file says: who serves the store and how to reach it."""

    pid: int
    name: str
    url: str
    token: str


def find_host(directory: Path, collection: str) -> HostRecord | None:
    """The serving holder of `collection`'s lock, if the holder serves (its host file names it)."""
    try:
        data = json.loads(host_file(directory, collection).read_text())
        record = HostRecord(int(data["pid"]), str(data.get("name", "search-ui")), str(data["url"]),
                            str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none, unreadable (another user's), or half written
    if data.get("protocol") != PROTOCOL or _lock_holder_pid(directory, collection) != record.pid:
        return None  # the lock is someone else's now
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return None  # left by a holder that was killed
    except PermissionError:
        pass  # alive, another user's (its token file is unreadable here anyway)
    return record


class _Served(Exception):
    """Raised from the lock's busy hook: the holder serves the store."""

    def __init__(self, host: HostRecord) -> None:
        super().__init__(host.url)
        self.host = host


def _this_process() -> str:
    return f"{os.getpid()} ({' '.join(Path(a).name for a in sys.argv[:2])})"


class HostLink:
    """The connection to a serving holder, shared by the RemoteStores of one command, and the
    write lease while the command holds one."""

    def __init__(self, host: HostRecord) -> None:
        import httpx

        self.host = host
        self.what = f"{host.name} (process {host.pid}) at {host.url}"
        self._httpx = httpx
        self.client = httpx.Client(base_url=host.url.rstrip("/") + PREFIX, timeout=httpx.Timeout(None, connect=10.0),
                                   headers={"Authorization": f"Bearer {host.token}", "Accept-Encoding": "identity"},
                                   trust_env=False)  # never through an HTTP proxy: this is a local call
        self._lease_stream = None
        self.lease_id: str | None = None

    def _lost(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"Lost the connection to {self.what}, which holds the embedded store "
                                f"({type(exc).__name__}); check that it still runs and rerun the command.")

    def ping(self) -> dict[str, Any]:
        try:
            response = self.client.get("/ping")
        except self._httpx.HTTPError as exc:
            raise StoreUnavailable(
                f"The embedded store is held by {self.what}, which does not answer ({type(exc).__name__}): "
                f"wait until it has started, or stop it.") from exc
        if response.status_code != 200:
            raise StoreUnavailable(f"{self.what} refused this process ({response.status_code}): "
                                   f"is DATA_DIR shared with another user?")
        return response.json()

    def call(self, collection: str, method: str, **args: Any) -> Any:
        headers = {LEASE_HEADER: self.lease_id} if self.lease_id else None
        try:
            response = self.client.post(f"/call/{collection}/{method}", content=json.dumps(args), headers=headers)
            data = response.json()
        except self._httpx.HTTPError as exc:
            raise self._lost(exc) from exc
        except ValueError as exc:
            raise StoreUnavailable(f"{self.what} answered {method} with something else than JSON") from exc
        if "error" in data:
            raise _error_in(data["error"], f"{method} on {self.what}")
        return data["result"]

    def scroll(self, collection: str, where: Where | None, with_vectors: bool,
               batch_size: int) -> Iterator[StoredPoint]:
        body = json.dumps({"where": _where_out(where), "with_vectors": with_vectors, "batch_size": batch_size})
        try:
            with self.client.stream("POST", f"/scroll/{collection}", content=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise _error_in(response.json().get("error", {}), f"scroll on {self.what}")
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    data = json.loads(line)
                    if "error" in data:
                        raise _error_in(data["error"], f"scroll on {self.what}")
                    if data.get("end"):
                        return
                    for point in data["points"]:
                        yield _point_in(point)
        except self._httpx.HTTPError as exc:
            raise self._lost(exc) from exc
        # The stream ended without its end mark: the holder stopped halfway; never a silent partial read.
        raise StoreUnavailable(f"{self.what} stopped in the middle of a scroll; rerun the command.")

    def take_lease(self, location: str, wait: float, on_wait: Callable[[str, float], None] | None,
                   said_wait: float | None = None) -> None:
        """Hold the holder's write lock until `close()`; waits up to `wait` seconds if it is busy
        (`said_wait`: the wait the user asked for, when part of it was spent already)."""
        said = wait if said_wait is None else said_wait
        if self.lease_id is not None:
            return
        try:
            stream = self.client.stream("POST", "/lease", content=json.dumps({"wait": wait, "holder": _this_process()}))
            response = stream.__enter__()
        except self._httpx.HTTPError as exc:
            raise self._lost(exc) from exc
        try:
            if response.status_code != 200:
                response.read()
                raise _error_in(response.json().get("error", {}), f"lease from {self.what}")
            # One iterator, kept for as long as the lease: a dropped line iterator closes the connection.
            lines = response.iter_lines()
            for line in lines:
                if not line.strip():
                    continue
                data = json.loads(line)
                if "busy" in data and wait > 0 and on_wait is not None:
                    on_wait(str(data.get("holder", "?")), said)
                if "granted" in data:
                    self.lease_id = str(data["granted"])
                    self._lease_stream = (stream, lines)
                    return
                if "timeout" in data:
                    raise StoreLocked(
                        f"The {location} is still busy after waiting {said:g}s: {data['timeout']}. "
                        f"Wait longer (--wait SECONDS or STORE_LOCK_WAIT)." if wait > 0 else
                        f"The {location} is busy: {data['timeout']}. Wait for it to finish "
                        f"(--wait SECONDS or STORE_LOCK_WAIT waits for it).")
            raise StoreUnavailable(f"{self.what} closed the write lease unexpectedly; rerun the command.")
        except self._httpx.HTTPError as exc:
            stream.__exit__(None, None, None)
            raise self._lost(exc) from exc
        except BaseException:
            stream.__exit__(None, None, None)
            raise

    def close(self) -> None:
        """End the lease (the holder's write lock is released when this connection closes)."""
        held, self._lease_stream, self.lease_id = self._lease_stream, None, None
        if held is not None:
            with contextlib.suppress(Exception):
                held[0].__exit__(None, None, None)
        with contextlib.suppress(Exception):
            self.client.close()


class RemoteStore:
    """The Store contract, answered by the process that holds the embedded store."""

    servable = False  # held by another process

    def __init__(self, link: HostLink, collection: str, location: str, owns_link: bool = True,
                 directory: Path | None = None, lock_wait: float = 0.0, min_free_mb: int | None = None) -> None:
        """`directory`, `lock_wait`, `min_free_mb`: how open_embedded was asked for it (for `beside`)."""
        self.link = link
        self.collection = collection
        self.location = location  # the holder's own words: output reads as if run locally
        self._owns_link = owns_link
        self._info: CollectionInfo | None = None
        self._opening = (directory, lock_wait, min_free_mb)

    @property
    def holder(self) -> str:
        return self.link.what

    def beside(self, collection: str, write: bool = False) -> Store:
        """`collection` in the same folder: through the same connection when the holder serves it
        too, else opened here (open_embedded)."""
        directory, wait, min_free_mb = self._opening
        if directory is None:
            raise ValueError("beside() needs a RemoteStore from open_embedded (it knows the folder)")
        return open_embedded(directory, collection, wait=wait, write=write, min_free_mb=min_free_mb, link=self.link)

    @classmethod
    def connect(cls, host: HostRecord, collection: str, write: bool = False, wait: float = 0.0,
                on_wait=None, link: HostLink | None = None, said_wait: float | None = None,
                directory: Path | None = None, lock_wait: float = 0.0, min_free_mb: int | None = None) -> RemoteStore:
        """Reach `collection` on `host` (reusing `link` when it goes to the same holder); with
        `write`, take the write lease first. `directory`, `lock_wait`, `min_free_mb`: see __init__."""
        owns = link is None or link.host != host
        if owns:
            link = HostLink(host)
        try:
            served = link.ping().get("collections", {})
            if collection not in served:
                raise StoreUnavailable(f"{link.what} holds the embedded store but not collection '{collection}' "
                                       f"(it serves {', '.join(sorted(served)) or 'none'}): use the same "
                                       f"QDRANT_COLLECTION and PROJECTION_HEAD as the UI, or stop it.")
            if write:
                link.take_lease(served[collection], wait, on_wait, said_wait)
        except BaseException:
            if owns:
                link.close()
            raise
        return cls(link, collection, served[collection], owns_link=owns, directory=directory, lock_wait=lock_wait,
                   min_free_mb=min_free_mb)

    def info(self) -> CollectionInfo | None:
        if self._info is None:  # once it exists, a collection's record never changes
            self._info = _info_in(self.link.call(self.collection, "info"))
        return self._info

    def ensure_collection(self, model: str, dimension: int, text_model: str | None = None) -> CollectionInfo:
        self._info = _info_in(self.link.call(self.collection, "ensure_collection", model=model, dimension=dimension,
                                             text_model=text_model))
        return self._info

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        if points:
            self.link.call(self.collection, "upsert", points=[_point_out(p) for p in points])

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        found = self.link.call(self.collection, "retrieve", ids=list(ids), with_vectors=with_vectors)
        return [_point_in(p) for p in found]

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if ids:
            self.link.call(self.collection, "set_payload", ids=list(ids), payload=payload)

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.link.call(self.collection, "delete", ids=list(ids))

    def query(self, vector, where: Where | None = None, limit: int = 10, score_threshold: float | None = None,
              exact: bool | None = None) -> list[Hit]:
        hits = self.link.call(self.collection, "query", vector=_vector_out(vector), where=_where_out(where),
                              limit=limit, score_threshold=score_threshold, exact=exact)
        return [Hit(str(h["id"]), float(h["score"]), dict(h["payload"] or {})) for h in hits]

    def recommend(self, positive, negative=(), where: Where | None = None, limit: int = 10,
                  score_threshold: float | None = None, strategy: str = "average_vector") -> list[Hit]:
        from core.store.base import _check_recommend

        _check_recommend(positive, negative, strategy)  # refused here, as the local stores do
        hits = self.link.call(self.collection, "recommend", positive=[_vector_out(v) for v in positive],
                              negative=[_vector_out(v) for v in negative], where=_where_out(where), limit=limit,
                              score_threshold=score_threshold, strategy=strategy)
        return [Hit(str(h["id"]), float(h["score"]), dict(h["payload"] or {})) for h in hits]

    def scroll(self, where: Where | None = None, with_vectors: bool = False,
               batch_size: int = 512) -> Iterator[StoredPoint]:
        return self.link.scroll(self.collection, where, with_vectors, batch_size)

    def count(self, where: Where | None = None) -> int:
        return int(self.link.call(self.collection, "count", where=_where_out(where)))

    def facet(self, key: str, where: Where | None = None) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.link.call(self.collection, "facet", key=key,
                                                          where=_where_out(where)).items()}

    def optimize(self) -> None:
        self.link.call(self.collection, "optimize")

    def check_writable(self, doing: str = "writing to the index") -> None:
        """The holder's own check (free space, read-only DATA_DIR), before any work starts."""
        self.link.call(self.collection, "check_writable", doing=doing)

    def close(self) -> None:
        if self._owns_link:
            self.link.close()


# --------------------------------------------------------------------------- opening


def open_embedded(directory: Path, collection: str, wait: float = 0.0, on_wait=None, write: bool = False,
                  link: HostLink | None = None, min_free_mb: int | None = None) -> Store:
    """The embedded store: opened here when free, reached through its holder when that holder
    serves it (the search UI), waited for (up to `wait` seconds) otherwise.

    `write`: the command will write, so it takes the holder's write lease (waited for like the
    lock). `link`: a connection this command already has (RemoteStore.beside), shared when it goes
    to the same holder."""
    started = time.monotonic()

    def while_busy() -> None:
        host = find_host(directory, collection)
        if host is not None:
            raise _Served(host)

    try:
        margin = {} if min_free_mb is None else {"min_free_mb": min_free_mb}
        return EdgeStore(directory, collection, lock_wait=wait, on_wait=on_wait, while_busy=while_busy, **margin)
    except _Served as served:
        left = max(0.0, wait - (time.monotonic() - started))
        return RemoteStore.connect(served.host, collection, write=write, wait=left, on_wait=on_wait, link=link,
                                   said_wait=wait, directory=directory, lock_wait=wait, min_free_mb=min_free_mb)
