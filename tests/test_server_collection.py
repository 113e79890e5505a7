"""QDRANT_* collection settings: the exact requests a Qdrant server receives (recorded at
qdrant-client's HTTP layer), the defaults unchanged for one server, and qdrant-client local
mode accepting the same calls."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from core.app import server_collection_config
from core.errors import ShoeSearchError
from core.settings import Settings, load_settings
from core.store.base import INDEXED_KEYWORDS, StoredPoint
from core.store.qdrant import QdrantClientStore, ServerCollectionConfig

DIM = 4
CLUSTER_ENV = {
    "QDRANT_SHARD_NUMBER": "6", "QDRANT_REPLICATION_FACTOR": "2", "QDRANT_WRITE_CONSISTENCY_FACTOR": "2",
    "QDRANT_READ_CONSISTENCY": "majority", "QDRANT_TENANT_INDEX": "true", "QDRANT_QUANTIZATION": "int8",
    "QDRANT_VECTORS_ON_DISK": "true", "QDRANT_OVERSAMPLING": "3", "QDRANT_HNSW_EF": "256",
}


class RecordingServer:
    """qdrant-client's HTTP transport, answering as an empty Qdrant server does, recording
    every request (method, path, query parameters, JSON body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, dict(request.url.params), body))
        path = request.url.path
        if path.endswith("/exists"):
            result: object = {"exists": False}
        elif path.endswith("/index") or request.method == "PUT" and path.endswith("/points"):
            result = {"operation_id": 1, "status": "completed"}
        elif path.endswith("/points/query"):
            result = {"points": []}
        elif path.endswith("/points/scroll"):
            result = {"points": [], "next_page_offset": None}
        else:
            result = True
        return httpx.Response(200, json={"result": result, "status": "ok", "time": 0.0})

    def client(self) -> QdrantClient:
        return QdrantClient(url="http://qdrant.test:6333", transport=httpx.MockTransport(self),
                            check_compatibility=False)


def _exercise(store: QdrantClientStore) -> None:
    store.ensure_collection("clip-test", DIM)
    store.query(np.ones(DIM))                                  # a search
    store.query(np.ones(DIM), limit=5, exact=False)            # clustering's kNN candidates
    store.query(np.ones(DIM), limit=5, exact=True)
    list(store.scroll(with_vectors=True, batch_size=100))      # clustering / eval / export read


def _requests(config: ServerCollectionConfig | None) -> list:
    server = RecordingServer()
    _exercise(QdrantClientStore(server.client(), "shoes", "test server", config))
    return server.requests


META = {"model": "clip-test", "dimension": DIM, "schema_version": 1}
QUERY = {"query": {"nearest": [1.0] * DIM}, "using": "clip", "with_vector": False, "with_payload": True}
SCROLL = {"limit": 100, "with_payload": True, "with_vector": True}


def test_default_settings_send_the_requests_of_one_server_as_before():
    config = server_collection_config(Settings(_env_file=None))
    assert config == ServerCollectionConfig()
    assert _requests(config) == [
        ("GET", "/collections/shoes/exists", {}, None),
        ("PUT", "/collections/shoes", {}, {"vectors": {"clip": {"size": DIM, "distance": "Cosine"}}, "metadata": META}),
        *[("PUT", "/collections/shoes/index", {"wait": "true"}, {"field_name": key, "field_schema": "keyword"})
          for key in INDEXED_KEYWORDS],
        ("POST", "/collections/shoes/points/query", {}, {**QUERY, "limit": 10}),
        ("POST", "/collections/shoes/points/query", {}, {**QUERY, "params": {"exact": False}, "limit": 5}),
        ("POST", "/collections/shoes/points/query", {}, {**QUERY, "params": {"exact": True}, "limit": 5}),
        ("POST", "/collections/shoes/points/scroll", {}, SCROLL),
    ]
    assert _requests(None) == _requests(config)


def test_cluster_settings_make_these_requests(monkeypatch):
    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    requests = _requests(server_collection_config(Settings(_env_file=None)))
    assert requests[1] == ("PUT", "/collections/shoes", {}, {
        "vectors": {"clip": {"size": DIM, "distance": "Cosine", "on_disk": True}},
        "shard_number": 6, "replication_factor": 2, "write_consistency_factor": 2,
        "quantization_config": {"scalar": {"type": "int8", "always_ram": True}},
        "metadata": META,
    })
    indexes = {body["field_name"]: body["field_schema"] for _, path, _, body in requests if path.endswith("/index")}
    assert indexes == {"factory": {"type": "keyword", "is_tenant": True},
                       **{key: "keyword" for key in INDEXED_KEYWORDS if key != "factory"}}
    searches = [(params, body) for _, path, params, body in requests if path.endswith("/points/query")]
    rescored = {"hnsw_ef": 256, "quantization": {"rescore": True, "oversampling": 3.0}}
    assert searches == [
        ({"consistency": "majority"}, {**QUERY, "params": rescored, "limit": 10}),
        ({"consistency": "majority"}, {**QUERY, "params": {"exact": False, **rescored}, "limit": 5}),
        # exact means exact: the original vectors, not the int8 copy
        ({"consistency": "majority"}, {**QUERY, "params": {"exact": True, "quantization": {"ignore": True}},
                                       "limit": 5}),
    ]
    assert requests[-1] == ("POST", "/collections/shoes/points/scroll", {"consistency": "majority"}, SCROLL)


@pytest.mark.parametrize("setting, sent", [
    ({"QDRANT_READ_CONSISTENCY": "2"}, ({"consistency": "2"}, None)),
    ({"QDRANT_READ_CONSISTENCY": "ALL"}, ({"consistency": "all"}, None)),
    ({"QDRANT_HNSW_EF": "128"}, ({}, {"hnsw_ef": 128})),
    ({"QDRANT_QUANTIZATION": "int8", "QDRANT_RESCORE": "false"}, ({}, {"quantization": {"rescore": False,
                                                                                         "oversampling": 2.0}})),
])
def test_one_search_setting_alone(monkeypatch, setting, sent):
    for key, value in setting.items():
        monkeypatch.setenv(key, value)
    requests = _requests(server_collection_config(Settings(_env_file=None)))
    params, body = next((p, b) for _, path, p, b in requests if path.endswith("/points/query"))
    assert (params, body.get("params")) == sent


def test_settings_names_empty_values_and_errors(monkeypatch):
    for key in ("QDRANT_SHARD_NUMBER", "QDRANT_REPLICATION_FACTOR", "QDRANT_WRITE_CONSISTENCY_FACTOR", "QDRANT_HNSW_EF",
                "QDRANT_READ_CONSISTENCY"):
        monkeypatch.setenv(key, "")  # as .env.example leaves them
    s = Settings(_env_file=None)
    assert (s.qdrant_shard_number, s.qdrant_replication_factor, s.qdrant_write_consistency_factor,
            s.qdrant_hnsw_ef, s.qdrant_read_consistency) == (None, None, None, None, "")
    assert (s.qdrant_tenant_index, s.qdrant_quantization, s.qdrant_vectors_on_disk) == (False, "none", False)
    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    assert server_collection_config(Settings(_env_file=None)) == ServerCollectionConfig(
        shard_number=6, replication_factor=2, write_consistency_factor=2, read_consistency="majority",
        tenant_index=True, quantization="int8", vectors_on_disk=True, rescore=True, oversampling=3.0, hnsw_ef=256)
    monkeypatch.setenv("QDRANT_READ_CONSISTENCY", "most")
    with pytest.raises(ShoeSearchError, match=r"^bad setting .*QDRANT_READ_CONSISTENCY=most: .*majority") as err:
        load_settings(_env_file=None)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("QDRANT_READ_CONSISTENCY", "")
    monkeypatch.setenv("QDRANT_SHARD_NUMBER", "0")
    with pytest.raises(ShoeSearchError, match="QDRANT_SHARD_NUMBER=0"):
        load_settings(_env_file=None)


class _Recording:
    """A real local-mode client whose calls are recorded, then passed through unchanged."""

    def __init__(self, client: QdrantClient) -> None:
        self._inner = client
        self.init_options = client.init_options  # local mode, as the store reads it
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name):
        method = getattr(self._inner, name)

        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return method(*args, **kwargs)

        return record


def test_local_mode_accepts_the_cluster_settings_and_answers_the_same(monkeypatch):
    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    config = server_collection_config(Settings(_env_file=None))
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = [StoredPoint(f"00000000-0000-0000-0000-{i:012d}", {"factory": "ab"[i % 2]}, vectors[i]) for i in range(40)]
    answers = []
    for chosen in (ServerCollectionConfig(), config):
        client = _Recording(QdrantClient(":memory:"))
        store = QdrantClientStore(client, "shoes", "local", chosen)
        store.ensure_collection("clip-test", DIM)
        store.upsert(points)
        hits = store.query(vectors[0], where={"factory": ["a"]}, limit=5)
        answers.append(([h.point_id for h in hits], len(list(store.scroll(with_vectors=True)))))
        calls = {name: kwargs for name, _, kwargs in client.calls}
    assert answers[0] == answers[1] and answers[1][0][0] == points[0].id and answers[1][1] == 40
    # the last loop ran with the cluster settings: these objects reached qdrant-client
    assert calls["create_collection"]["shard_number"] == 6
    assert calls["create_collection"]["quantization_config"] == models.ScalarQuantization(
        scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True))
    assert calls["create_collection"]["vectors_config"]["clip"].on_disk is True
    assert calls["query_points"]["search_params"] == models.SearchParams(
        hnsw_ef=256, quantization=models.QuantizationSearchParams(rescore=True, oversampling=3.0))
    assert calls["query_points"]["consistency"] == models.ReadConsistencyType.MAJORITY
    assert calls["scroll"]["consistency"] == models.ReadConsistencyType.MAJORITY
