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
