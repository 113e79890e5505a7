"""Settings come from env vars and .env under the exact documented names."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings


def test_defaults(monkeypatch):
    monkeypatch.delenv("EMBED_PRECISION")
    s = Settings(_env_file=None)
    assert s.embed_precision == "auto" and s.decode_max_side == 1600
    assert s.data_dir == Path("./data")
    assert s.qdrant_url == "" and s.qdrant_collection == "shoes"
    assert s.clip_model == "clip-ViT-B-32" and s.detector_model == "yolov8n-oiv7.pt"
    assert s.detect_confidence == 0.25 and s.device == "auto"
    assert s.detector_classes == ["Footwear", "Boot", "High heels", "Sandal", "Roller skates"]
    assert s.detection_enabled


def test_env_names(monkeypatch):
    for key, value in {
        "DATA_DIR": "/tmp/x", "QDRANT_URL": "http://localhost:6333", "QDRANT_API_KEY": "k",
        "QDRANT_COLLECTION": "c", "CLIP_MODEL": "/models/clip", "DETECTOR_MODEL": "none",
        "DETECT_CONFIDENCE": "0.4", "DEVICE": "cpu", "BATCH_SIZE": "7", "DETECTOR_CLASSES": "Boot, Sandal",
    }.items():
        monkeypatch.setenv(key, value)
    s = Settings(_env_file=None)
    assert (s.data_dir, s.qdrant_url, s.qdrant_api_key, s.qdrant_collection) == (Path("/tmp/x"), "http://localhost:6333", "k", "c")
    assert (s.clip_model, s.detect_confidence, s.device, s.batch_size) == ("/models/clip", 0.4, "cpu", 7)
    assert s.detector_classes == ["Boot", "Sandal"] and not s.detection_enabled


def test_dotenv_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text("QDRANT_COLLECTION=from_file\nBATCH_SIZE=3\n")
    s = Settings(_env_file=env)
    assert (s.qdrant_collection, s.batch_size) == ("from_file", 3)


def test_env_example_lists_every_setting():
    example = (Path(__file__).parents[1] / ".env.example").read_text()
    listed = {line.split("=", 1)[0].lstrip("# ").strip() for line in example.splitlines() if "=" in line}
    assert {name.upper() for name in Settings.model_fields} <= listed
