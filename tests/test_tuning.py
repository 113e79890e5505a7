"""The tuned head must beat the raw vectors on held-out products, and reload to the same map."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ShoeSearchError
from core.quality.tune import ProjectionHead, split_products, train_head


def synthetic(products: int = 120, photos: int = 4, dim: int = 64, signal_dims: int = 16, seed: int = 0):
    """Product identity lives in a few dimensions; photo-to-photo nuisance (light, background)
    is louder and spread over the rest: a linear map can learn to ignore it."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(products, signal_dims))
    vectors, labels, photo_ids = [], [], []
    for p in range(products):
        for k in range(photos):
            v = np.zeros(dim)
            v[:signal_dims] = centres[p] + rng.normal(scale=0.3, size=signal_dims)
            v[signal_dims:] = rng.normal(scale=0.9, size=dim - signal_dims)
            vectors.append(v / np.linalg.norm(v))
            labels.append(f"f/P{p}")
            photo_ids.append(f"f/P{p}/{k}")
    return np.asarray(vectors, dtype=np.float32), labels, photo_ids


@pytest.mark.parametrize("loss", ["mnr", "triplet"])
def test_head_raises_validation_map_and_reloads(tmp_path, loss):
    vectors, labels, photos = synthetic()
    ids = [f"id{i}" for i in range(len(labels))]
    head = train_head(vectors, labels, photos, ids, base_model="synthetic", dim_out=16, loss=loss, epochs=40, seed=1)
    before, after = head.info.metrics["val_mAP_raw"], head.info.metrics["val_mAP_head"]
    assert after > before + 0.1, (before, after)
    assert head.info.val_products == 24 and head.info.train_products == 96
    path = head.save(tmp_path / "head.npz")
    again = ProjectionHead.load(path)
    assert again.info == head.info
    np.testing.assert_array_equal(again.apply(vectors[:10]), head.apply(vectors[:10]))
    np.testing.assert_allclose(np.linalg.norm(again.apply(vectors), axis=1), 1.0, atol=1e-5)


def test_split_keeps_products_whole():
    labels = [f"P{i // 3}" for i in range(300)]
    train, val = split_products(labels, 0.2, seed=3)
    assert len(val) == 60 and not {labels[i] for i in train} & {labels[i] for i in val}


def test_too_little_data_and_bad_files_are_clear(tmp_path):
    vectors, labels, photos = synthetic(products=3)
    with pytest.raises(ShoeSearchError, match="Too little to learn from"):
        train_head(vectors, labels, photos, [str(i) for i in range(len(labels))], "m")
    (tmp_path / "x.npz").write_bytes(b"nope")
    with pytest.raises(ShoeSearchError, match="is not a projection head"):
        ProjectionHead.load(tmp_path / "x.npz")
