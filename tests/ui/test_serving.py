"""Serving settings: login, public-bind warning, a missing model at start-up."""

from __future__ import annotations

import logging
import subprocess
import sys

import httpx
import pytest
from gradio_client import Client

from search_ui.app import launch


def test_login_is_required_when_configured(ui_settings, handlers):
    settings = ui_settings.model_copy(update={"ui_username": "buyer", "ui_password": "s3cret-pass"})
    demo = launch(settings, handlers, block=False)
    url = f"http://127.0.0.1:{settings.ui_port}/"
    try:
        denied = httpx.post(f"{url}login", data={"username": "buyer", "password": "wrong"})
        assert denied.status_code == 400
        with pytest.raises(Exception):
            Client(url, verbose=False)
        client = Client(url, auth=("buyer", "s3cret-pass"), verbose=False)
        _, status, hits = client.predict("boot", [], "", False, 0.0, 2, False, api_name="/search_text")
        assert len(hits) == 2
    finally:
        demo.close()


def test_public_bind_without_login_warns(ui_settings, handlers, caplog):
    settings = ui_settings.model_copy(update={"ui_host": "0.0.0.0"})
    with caplog.at_level(logging.WARNING, logger="search_ui"):
        demo = launch(settings, handlers, block=False)
    demo.close()
    assert "without a login: anyone on the network can use it" in caplog.text


def test_missing_model_at_start_up_is_one_clear_line(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "data"), "CLIP_MODEL": str(tmp_path / "no-such-model"),
           "DETECTOR_MODEL": "none", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "search_ui"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: CLIP model folder not found")
    assert "Traceback" not in result.stderr


def test_without_login_nothing_is_served(ui_settings, handlers):
    """The page, the API, the config and the file routes all refuse before login (plain HTTP)."""
    settings = ui_settings.model_copy(update={"ui_username": "buyer", "ui_password": "s3cret-pass"})
    demo = launch(settings, handlers, block=False)
    url = f"http://127.0.0.1:{settings.ui_port}/"
    thumb = handlers.data_dir / next(iter(handlers.store.scroll())).payload["crop_path"]
    try:
        page = httpx.get(url)
        assert page.status_code == 200 and "factory_a" not in page.text  # the login form only:
        assert "search_text" not in page.text and "window.gradio_api_info = {\"named_endpoints\": {}, \"unnamed_endpoints\": {}};" in page.text  # no API schema
        for path in ("config", "gradio_api/info", f"gradio_api/file={thumb}"):
            response = httpx.get(url + path)
            assert response.status_code in (401, 403), (path, response.status_code)
            assert b"factory_a" not in response.content and b"\xff\xd8" != response.content[:2]
        call = httpx.post(url + "gradio_api/call/search_text", json={"data": ["boot"]})
        assert call.status_code in (401, 403)
        logged_in = httpx.Client()
        assert logged_in.post(url + "login", data={"username": "buyer", "password": "s3cret-pass"}).status_code == 200
        assert logged_in.get(f"{url}gradio_api/file={thumb}").content[:2] == b"\xff\xd8"
        assert "factory_a" in logged_in.get(url + "config").text
        assert "/search_text" in logged_in.get(url).text  # after login the page is whole again
    finally:
        demo.close()


def test_failed_logins_back_off():
    from search_ui.app import LoginThrottle

    check = LoginThrottle("buyer", "s3cret-pass", base=0.05, cap=0.2)
    assert check.delay() == 0
    assert not check("buyer", "guess-1") and not check("buyer", "guess-2") and not check("buyer", "guess-3")
    assert check.delay() == 0.2  # 0.05, 0.1, 0.2: doubling up to the cap
    import time

    started = time.perf_counter()
    assert check("buyer", "s3cret-pass")
    assert time.perf_counter() - started >= 0.2 and check.delay() == 0


def _serve(tmp_path, env_extra, timeout=120):
    import os

    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "DETECTOR_MODEL": "none", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    return subprocess.run([sys.executable, "-m", "search_ui"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=timeout)


def test_a_collection_of_another_model_refuses_start_up(tmp_path, tiny_clip_dir, sample):
    from core.catalogue.folders import discover
    from core.pipeline.ingest import IngestService
    from core.store.edge import EdgeStore
    from core.vision.detector import NoDetector
    from core.vision.embedder import ClipEmbedder

    store = EdgeStore(tmp_path / "data" / "qdrant-edge", "shoes")
    embedder = ClipEmbedder(str(tiny_clip_dir), device="cpu", precision="fp32")
    IngestService(store, embedder, NoDetector(), tmp_path / "data").add(discover(sample.factory_dir("factory_a")), "factory_a")
    store.close()
    other = tmp_path / "other-clip"
    import shutil

    shutil.copytree(tiny_clip_dir, other)  # another model name, as a user pointing at another model
    result = _serve(tmp_path, {"CLIP_MODEL": str(other), "UI_PORT": str(_free_port())})
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Collection 'shoes' at ") and "CLIP_MODEL is " in last
    assert "Traceback" not in result.stderr


def test_a_busy_port_is_one_line_naming_ui_port(tmp_path, tiny_clip_dir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(tmp_path, {"CLIP_MODEL": str(tiny_clip_dir), "UI_PORT": str(port)})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: UI_PORT {port} on 127.0.0.1 is already in use (another search-ui?): stop that program or set "
        "UI_PORT to a free port."]


def test_start_up_prints_where_it_serves_and_no_share_hint(tmp_path, tiny_clip_dir):
    import os
    import socket
    import time

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "DETECTOR_MODEL": "none", "CLIP_MODEL": str(tiny_clip_dir),
           "UI_PORT": str(port), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "search_ui"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=tmp_path)
    try:
        deadline, lines = time.monotonic() + 180, []
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving on" in line:
                break
        assert any(f"search-ui: serving on http://127.0.0.1:{port}" in line for line in lines), lines
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        server.terminate()
        rest = server.communicate(timeout=60)[0]
    output = "".join(lines) + rest
    assert "share=True" not in output and "Traceback" not in output


def _free_port() -> int:
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def test_a_bad_setting_is_one_line_in_the_ui_and_the_cli(tmp_path):
    result = _serve(tmp_path, {"UI_PORT": "0"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: bad setting (environment or .env): UI_PORT=0: Input should be greater than or equal to 1"]
    import os

    cli = subprocess.run([sys.executable, "-m", "ingest", "stats"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "DATA_DIR": str(tmp_path / "data"), "BATCH_SIZE": "many"})
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert cli.stderr.strip().startswith("error: bad setting (environment or .env): BATCH_SIZE=many: ")
