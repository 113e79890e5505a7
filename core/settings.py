"""All settings, read from environment variables and an optional `.env` file.

Build one `Settings()` at the edge (CLI command, UI start-up) and pass it down;
nothing in `core` reads the environment on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

OIV7_FOOTWEAR = ["Footwear", "Boot", "High heels", "Sandal", "Roller skates"]


class Settings(BaseSettings):
    """Every knob of the product. Env var names are the field names in upper case."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Embedded store, thumbnails and reports live here.")
    min_free_disk_mb: int = Field(
        100, ge=0, description="Writes stop (one line, exit 1) when DATA_DIR's disk has less free space: the "
                               "embedded store maps its files into memory and dies by SIGBUS on a full disk.")
    qdrant_url: str = Field("", description="Qdrant server URL; empty means the embedded store under DATA_DIR.")
    qdrant_api_key: str = Field("", description="API key for the Qdrant server (if it requires one).")
    qdrant_collection: str = Field("shoes", description="Collection (embedded: shard folder) name.")
    store_lock_wait: float = Field(
        0.0, ge=0.0, description="Seconds to wait for another process's hold on the embedded store (0: fail at once).")

    # A Qdrant server or cluster (QDRANT_URL set); the embedded store ignores these. Layout
    # settings apply when the collection is created; search settings apply to every query.
    # Empty / the defaults send nothing: Qdrant's own defaults, the requests of one server as before.
    qdrant_shard_number: Optional[int] = Field(
        None, ge=1, description="Shards of a new collection (cluster: a few per node, e.g. 6 on 3 nodes).")
    qdrant_replication_factor: Optional[int] = Field(
        None, ge=1, description="Copies of each shard on different nodes (2+: a node can go down).")
    qdrant_write_consistency_factor: Optional[int] = Field(
        None, ge=1, description="Replicas that must confirm a write before it succeeds.")
    qdrant_read_consistency: str = Field(
        "", description="Replicas a search or scroll asks: all, majority, quorum or a number (empty: one).")
    qdrant_tenant_index: bool = Field(
        False, description="Index `factory` as a tenant key (is_tenant): one collection partitioned by factory.")
    qdrant_quantization: Literal["none", "int8"] = Field(
        "none", description="int8: a scalar-quantized copy of the vectors kept in RAM (4x smaller), originals rescore.")
    qdrant_vectors_on_disk: bool = Field(
        False, description="Keep the original vectors on disk (memory-mapped); with int8 for collections past RAM.")
    qdrant_rescore: bool = Field(True, description="With int8: rescore the candidates with the original vectors.")
    qdrant_oversampling: float = Field(
        2.0, ge=1.0, description="With int8: fetch this many times the limit from the quantized index, then rescore.")
    qdrant_hnsw_ef: Optional[int] = Field(
        None, ge=1, description="HNSW search breadth per query (higher: better recall, slower); empty: the server's.")

    clip_model: str = Field("clip-ViT-B-32", description="sentence-transformers CLIP name or local directory.")
    text_model: str = Field(
        "", description="A text encoder trained into CLIP_MODEL's space for text queries (e.g. "
                        "clip-ViT-B-32-multilingual-v1 for clip-ViT-B-32: 50+ languages); empty = CLIP's own.")
    detector_model: str = Field("yolov8n-oiv7.pt", description="ultralytics YOLO weights name or file; 'none' = off.")
    detector_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(OIV7_FOOTWEAR),
        description="Detector class names kept as shoes (comma-separated).",
    )
    detect_confidence: float = Field(0.25, ge=0.0, le=1.0)
    detect_image_size: int = Field(
        320, ge=32, description="YOLO input size in pixels: 320 for product photos, 640 for small shoes in scenes.")
    detect_runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="YOLO runtime: onnx (ultralytics' ONNX export, ONNX Runtime), torch, or auto = onnx on a "
                            "CPU when the export works.")
    detect_precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="ONNX detector precision: fp32, int8, or auto = int8 when its boxes agree and it is faster.")
    crop_margin: float = Field(0.08, ge=0.0, le=1.0, description="Margin added around each box, as a fraction.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    embed_precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="Image embedding precision on CPU: int8 (ONNX Runtime), fp32, or auto (int8 when it agrees).")
    text_precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="CLIP text tower on CPU: fp32 (torch), int8 (ONNX Runtime), or auto = ONNX Runtime, int8 "
                            "when it agrees with fp32 (cosine >= 0.999 on probe texts), else the fp32 export.")
    batch_size: int = Field(32, ge=1, le=4096)

    background_removal: Literal["none", "rembg"] = Field(
        "none", description="Remove crop backgrounds before embedding (rembg, optional package).")
    background_model: str = Field("u2net", description="rembg model name.")
    projection_head: str = Field("", description="A head saved by `ingest tune`: photo queries use it; text stays raw.")
    max_image_pixels: int = Field(80_000_000, ge=1, description="Larger photos are refused (decompression bombs).")
    max_aspect_ratio: float = Field(20.0, ge=1.0, description="Photos whose long side exceeds this many short sides "
                                    "are refused (a 200000x1 strip is no product photo).")
    max_file_mb: float = Field(128, gt=0, description="Larger photo files are refused (each is read into memory "
                               "once, so its hash and its pixels come from the same bytes).")
    decode_max_side: int = Field(1600, ge=0, description="Photos are reduced to this longest side right after decoding "
                                 "(JPEGs decode at 1/2-1/8 scale first); 0 = full size.")
    thumbnail_size: int = Field(256, ge=32, description="Longest side of the stored crop thumbnails.")

    ui_host: str = Field("127.0.0.1", description="Address the search UI binds; 0.0.0.0 exposes it to the network.")
    ui_port: int = Field(7860, ge=1, le=65535)
    ui_username: str = Field("", description="With UI_PASSWORD: require this login for the UI.")
    ui_password: str = Field("", description="With UI_USERNAME: require this login for the UI.")
    ui_max_upload_mb: int = Field(50, ge=1, description="Largest upload (photo or zip) the UI accepts.")

    image_urls: bool = Field(True, description="Allow searching with a photo given by http(s) URL (UI, API, CLI).")
    image_url_max_mb: float = Field(20.0, gt=0, description="Largest photo fetched from a URL, in MB.")
    image_url_timeout: float = Field(10.0, gt=0, description="Seconds a URL fetch may take in all (redirects included).")
    image_url_allow_private: bool = Field(
        False, description="Also fetch from loopback and private-network addresses (an intranet image server); "
                           "link-local and cloud metadata addresses stay refused.")

    @field_validator("detector_classes", mode="before")
    @classmethod
    def _split_classes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("qdrant_shard_number", "qdrant_replication_factor", "qdrant_write_consistency_factor",
                     "qdrant_hnsw_ef", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("qdrant_read_consistency", mode="before")
    @classmethod
    def _read_consistency(cls, value: object) -> object:
        text = str(value).strip().lower() if value is not None else ""
        if text in ("", "all", "majority", "quorum") or (text.isdigit() and int(text) >= 1):
            return text
        raise ValueError("use all, majority, quorum, a number of replicas (1, 2, ...) or leave it empty")

    @field_validator("qdrant_url", "qdrant_api_key", "detector_model", "clip_model", "text_model", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @property
    def detection_enabled(self) -> bool:
        return self.detector_model.lower() not in {"", "none", "off"}

    @property
    def embedded_store_dir(self) -> Path:
        return self.data_dir / "qdrant-edge"

    @property
    def thumbnails_dir(self) -> Path:
        return self.data_dir / "crops"

    @property
    def models_cache_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"


def load_settings(**overrides) -> Settings:
    """Settings from the environment and `.env`, a bad value as one ShoeSearchError line.

    pydantic's ValidationError is a multi-line report with a link; a user who typed UI_PORT=0
    needs "UI_PORT=0: Input should be greater than or equal to 1".
    """
    from pydantic import ValidationError

    from core.errors import ShoeSearchError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "settings"
            value = error.get("input")
            shown = f"={value}" if isinstance(value, (str, int, float)) and len(str(value)) < 80 else ""
            problems.append(f"{name}{shown}: {error['msg']}")
        raise ShoeSearchError("bad setting (environment or .env): " + "; ".join(problems)) from None
