"""compose.yaml: one Qdrant server by default, or a 3-node Qdrant cluster with `--profile
cluster`, never both; the peers' port 6335 never published. Checked on the parsed YAML (Docker
is not on the build machines); `docker compose config` is asked too where Docker exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
NODES = ["qdrant-1", "qdrant-2", "qdrant-3"]


def _enabled(profiles: set[str]) -> set[str]:
    """Services `docker compose` runs with these active profiles (no-profile services always)."""
    return {name for name, service in SERVICES.items()
            if not service.get("profiles") or profiles & set(service["profiles"])}


def _published(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port ("IP:HOST:CONTAINER")."""
    published = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) == 3, f"{entry}: publish on an explicit address (127.0.0.1:HOST:CONTAINER)"
        published.append((parts[0], int(parts[1]), int(parts[2])))
    return published


def test_plain_up_is_the_single_server_and_the_cluster_profile_replaces_it():
    assert _enabled({"single"}) == {"qdrant", "ui"}
    assert _enabled({"cluster"}) == {*NODES, "ui-cluster"}
    assert _enabled(set()) == set(), "a service without a profile would also start with --profile cluster"
    env_example = (ROOT / ".env.example").read_text().splitlines()
    assert "COMPOSE_PROFILES=single" in env_example  # what makes a plain `docker compose up` the single server


@pytest.mark.parametrize("profile", ["single", "cluster"])
def test_each_profile_is_self_contained_with_loopback_ports_and_no_clash(profile):
    enabled = _enabled({profile})
    host_ports = []
    for name in enabled:
        for dependency in SERVICES[name].get("depends_on", {}):
            assert dependency in enabled, f"{name} depends on {dependency}, which {profile} does not start"
        for address, host_port, _ in _published(SERVICES[name]):
            assert address == "127.0.0.1"
            host_ports.append(host_port)
    assert len(host_ports) == len(set(host_ports))


def test_cluster_nodes_bootstrap_from_the_first_over_an_unpublished_p2p_port():
    first = SERVICES["qdrant-1"]["command"]
    assert first == ["./qdrant", "--uri", "http://qdrant-1:6335"]
    for name in NODES[1:]:
        command = SERVICES[name]["command"]
        assert command[command.index("--bootstrap") + 1] == "http://qdrant-1:6335"
        assert command[command.index("--uri") + 1] == f"http://{name}:6335"
        assert SERVICES[name]["depends_on"]["qdrant-1"]["condition"] == "service_healthy"
    for name, service in SERVICES.items():
        assert all(container != 6335 and host != 6335 for _, host, container in _published(service)), name
        assert "6335" not in str(service.get("expose", ""))


def test_every_node_has_cluster_mode_the_api_key_a_health_check_and_its_own_volume():
    volumes = []
    for name in NODES:
        node = SERVICES[name]
        env = node["environment"]
        assert env["QDRANT__CLUSTER__ENABLED"] == "true"
        assert env["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY:?")
        assert "/readyz" in " ".join(node["healthcheck"]["test"])
        assert node["image"] == SERVICES["qdrant"]["image"]  # one Qdrant version for both setups
        [mount] = [v for v in node["volumes"] if v.endswith(":/qdrant/storage")]
        volumes.append(mount.split(":")[0])
    assert len(set(volumes)) == 3 and set(volumes) <= set(COMPOSE["volumes"])
    assert "qdrant_storage" not in volumes  # the single server's data is never opened by a node


def test_the_uis_point_at_their_own_qdrant_with_the_key():
    single, cluster = SERVICES["ui"]["environment"], SERVICES["ui-cluster"]["environment"]
    assert urlparse(single["QDRANT_URL"]).hostname == "qdrant"
    assert urlparse(cluster["QDRANT_URL"]).hostname in NODES and urlparse(cluster["QDRANT_URL"]).port == 6333
    for env in (single, cluster):
        assert env["QDRANT_API_KEY"].startswith("${QDRANT_API_KEY")
    assert set(SERVICES["ui-cluster"]["depends_on"]) == set(NODES)
    assert all(d["condition"] == "service_healthy" for d in SERVICES["ui-cluster"]["depends_on"].values())
    # the collection a cluster UI (or `docker compose run --rm ui-cluster ingest ...`) creates
    assert cluster["QDRANT_SHARD_NUMBER"] == "${QDRANT_SHARD_NUMBER:-6}"
    assert cluster["QDRANT_REPLICATION_FACTOR"] == "${QDRANT_REPLICATION_FACTOR:-2}"
    assert cluster["QDRANT_TENANT_INDEX"] == "${QDRANT_TENANT_INDEX:-true}"
    assert "QDRANT_SHARD_NUMBER" not in single  # one server: as before
    # both UIs keep thumbnails, uploads and group ids in the same volume, so a move keeps them
    assert SERVICES["ui"]["volumes"] == SERVICES["ui-cluster"]["volumes"]


def _has_compose_v2() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_compose_v2(), reason="`docker compose` (v2) is not installed here")
@pytest.mark.parametrize("profile, expected", [("single", {"qdrant", "ui"}), ("cluster", {*NODES, "ui-cluster"})])
def test_docker_compose_agrees(profile, expected, tmp_path):
    result = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"), "--profile", profile,
                             "config", "--services"], capture_output=True, text=True,
                            env={"QDRANT_API_KEY": "test", "PATH": "/usr/bin:/bin:/usr/local/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == expected
