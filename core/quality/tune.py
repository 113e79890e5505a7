"""A projection head tuned on the catalogue: frozen CLIP crop vectors -> a smaller space where
crops of one product are closer (the older fine-tuning script's idea, done properly).

- Training data: vectors read from the store, labelled by (factory, product); products are
  split into train / validation (whole products, never crops of one product on both sides).
- Loss: multiple-negatives ranking (InfoNCE over a batch of products, two photos each) or
  batch-hard triplet. Early stopping on validation mAP (leave-one-out, `core.quality.metrics`).
- The head is one linear map (+ L2 normalisation), saved as `.npz` with its metadata (base
  model, sizes, data hash, metrics before/after) and applied with numpy.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ShoeSearchError
from core.quality.metrics import leave_one_out

HEAD_FORMAT = "shoe-search-projection-head"
HEAD_VERSION = 1


@dataclass
class HeadInfo:
    base_model: str
    dim_in: int
    dim_out: int
    data_hash: str
    loss: str
    epochs_run: int
    best_epoch: int
    train_products: int
    val_products: int
    metrics: dict[str, Any] = field(default_factory=dict)  # val mAP etc. before (raw) and after (head)
    created_at: str = ""
    format: str = HEAD_FORMAT
    version: int = HEAD_VERSION

    @property
    def head_id(self) -> str:
        return f"{self.data_hash[:8]}-{self.dim_out}d"


@dataclass
class ProjectionHead:
    """x -> normalize(x @ weight.T)."""

    weight: np.ndarray  # (dim_out, dim_in)
    info: HeadInfo

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        projected = np.asarray(vectors, dtype=np.float32) @ self.weight.T
        return projected / np.maximum(np.linalg.norm(projected, axis=-1, keepdims=True), 1e-12)

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, weight=self.weight.astype(np.float32), info=json.dumps(asdict(self.info)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> ProjectionHead:
        try:
            with np.load(path, allow_pickle=False) as data:
                info = json.loads(str(data["info"]))
                weight = np.asarray(data["weight"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise ShoeSearchError(f"PROJECTION_HEAD {path} is not a projection head saved by `ingest tune`: {exc}") from exc
        if info.get("format") != HEAD_FORMAT:
            raise ShoeSearchError(f"PROJECTION_HEAD {path} is not a projection head (format {info.get('format')!r}).")
        return cls(weight, HeadInfo(**info))


def data_hash(ids: Sequence[str], labels: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for pid, label in sorted(zip(ids, labels)):
        digest.update(f"{pid}\x1f{label}\n".encode())
    return digest.hexdigest()[:16]


def split_products(labels: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and validation items; each product falls wholly on one side."""
    products = sorted(set(labels))
    random.Random(seed).shuffle(products)
    n_val = max(1, int(round(len(products) * val_fraction)))
    val = set(products[:n_val])
    mask = np.array([label in val for label in labels])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _val_map(vectors: np.ndarray, labels: np.ndarray, photos: np.ndarray, idx: np.ndarray) -> float:
    result = leave_one_out(vectors[idx], labels[idx], photos[idx], ["val"] * len(idx))
    return float(result.overall.get("mAP", 0.0))


def train_head(vectors: np.ndarray, labels: Sequence[str], photos: Sequence[str], ids: Sequence[str],
               base_model: str, dim_out: int = 128, loss: str = "mnr", epochs: int = 60, patience: int = 8,
               lr: float = 3e-3, products_per_batch: int = 64, temperature: float = 0.05, seed: int = 0,
               progress: Callable[[int, float], None] | None = None) -> ProjectionHead:
    """Train a head on `vectors` (L2-normalised, one per crop) labelled by product."""
    import torch

    if loss not in ("mnr", "triplet"):
        raise ShoeSearchError("loss must be mnr or triplet")
    labels_arr, photos_arr = np.asarray(labels), np.asarray(photos)
    train_idx, val_idx = split_products(labels, seed=seed)
    by_product: dict[str, list[int]] = defaultdict(list)
    for i in train_idx:
        by_product[labels_arr[i]].append(int(i))
    trainable = [items for items in by_product.values() if len({photos_arr[i] for i in items}) > 1]
    if len(trainable) < 4 or len(val_idx) < 4:
        raise ShoeSearchError("Too little to learn from: need products with at least two photos each "
                              f"(found {len(trainable)} such products for training, {len(val_idx)} crops to validate).")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    dim_in = vectors.shape[1]
    layer = torch.nn.Linear(dim_in, dim_out, bias=False)
    with torch.no_grad():  # start from a random orthogonal projection: distances roughly kept
        q, _ = torch.linalg.qr(torch.randn(dim_in, dim_out))
        layer.weight.copy_(q.T)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    data = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))

    def project(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = torch.nn.functional.normalize(layer(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))), dim=-1)
        return out.numpy()

    before = _val_map(vectors, labels_arr, photos_arr, val_idx)
    best_map, best_state, best_epoch, stale, epoch = -1.0, None, 0, 0, 0
    for epoch in range(1, epochs + 1):
        rng.shuffle(trainable)
        for start in range(0, len(trainable), products_per_batch):
            group = trainable[start:start + products_per_batch]
            if len(group) < 2:
                continue
            pairs = [rng.sample(items, 2) for items in group]
            anchors = torch.nn.functional.normalize(layer(data[[a for a, _ in pairs]]), dim=-1)
            positives = torch.nn.functional.normalize(layer(data[[p for _, p in pairs]]), dim=-1)
            sims = anchors @ positives.T
            if loss == "mnr":
                target = torch.arange(len(pairs))
                value = torch.nn.functional.cross_entropy(sims / temperature, target)
            else:  # batch-hard triplet: the hardest other product for each anchor
                negatives = sims - torch.eye(len(pairs)) * 4.0
                value = torch.relu(negatives.max(dim=1).values - sims.diag() + 0.2).mean()
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
        val = _val_map(project(vectors), labels_arr, photos_arr, val_idx)
        if progress:
            progress(epoch, val)
        if val > best_map + 1e-4:
            best_map, best_epoch, stale = val, epoch, 0
            best_state = layer.weight.detach().clone()
        else:
            stale += 1
            if stale >= patience:
                break
    info = HeadInfo(base_model, dim_in, dim_out, data_hash(ids, labels), loss, epoch, best_epoch,
                    len(trainable), len(set(labels_arr[val_idx])),
                    {"val_mAP_raw": round(before, 4), "val_mAP_head": round(best_map, 4)},
                    datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return ProjectionHead(best_state.numpy().astype(np.float32), info)
