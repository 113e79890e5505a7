"""The perceptual-hash tier: re-encoded, resized and re-compressed copies of one photo, found
without the CLIP model; exact pair search by bands equals brute force."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from core.duplicates.photo_hash import MAX_DISTANCE, crop_phash, near_pairs
from ingest.cli import app
from tools.sample_catalogue import draw_shoe, make_catalogue, random_design

runner = CliRunner()


def test_band_search_equals_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    hashes = [base]
    for flips in (1, 3, 6, 9):  # copies of the bases with a few bits flipped
        noisy = base.copy()
        for _ in range(flips):
            noisy ^= np.uint64(1) << rng.integers(0, 64, size=40).astype(np.uint64)
        hashes.append(noisy)
    hashes = np.concatenate(hashes)
    brute = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    for distance in (0, 2, 6, 10, MAX_DISTANCE):
        rows, cols, found = near_pairs(hashes, distance)
        expected = {(i, j) for i, j in zip(*np.nonzero(brute <= distance)) if i < j}
        assert set(zip(rows.tolist(), cols.tolist())) == expected, distance
        assert np.all(found == brute[rows, cols]) and np.all(found <= distance)
    assert len(near_pairs(hashes, 6)[0]) > 40
    with pytest.raises(ValueError):
        near_pairs(hashes, MAX_DISTANCE + 1)


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def test_copies_stay_close_and_other_shoes_do_not():
    import random

    rng = random.Random(5)
    designs = [random_design(rng) for _ in range(12)]
    photos = [draw_shoe(d, (480, 360), "plain", seed=k)[0] for k, d in enumerate(designs)]
    original = int(crop_phash(photos[0]), 16)
    copies = [_jpeg(photos[0], 35), photos[0].resize((240, 180)), _jpeg(photos[0].resize((960, 720)), 60),
              photos[0].resize((320, 240), Image.Resampling.NEAREST)]
    for copy in copies:
        assert bin(original ^ int(crop_phash(copy), 16)).count("1") <= 6
    others = [bin(original ^ int(crop_phash(p), 16)).count("1") for p in photos[1:]]
    assert min(others) > 6, others


def test_cluster_phash_tier_finds_reencoded_and_resized_copies(cli_env, tmp_path):
    catalogue = make_catalogue(tmp_path / "shoes", factories=2, products_per_factory=3, variants_per_product=0,
                               shared_products=0)
    front = catalogue.photos[0].path
    copies = catalogue.factory_dir("factory_b") / "COPIES"
    copies.mkdir()
    img = Image.open(front).convert("RGB")
    img.save(copies / "recompressed.jpg", quality=30)
    img.resize((img.width // 2, img.height // 2)).save(copies / "half.png")
    img.resize((img.width * 2, img.height * 2)).save(copies / "double.jpg", quality=70)
    for factory in ("factory_a", "factory_b"):
        assert runner.invoke(app, ["add", str(catalogue.factory_dir(factory))]).exit_code == 0
    result = runner.invoke(app, ["cluster", "-o", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    groups = json.loads((tmp_path / "r" / "groups.json").read_text())
    phash = [g for g in groups if g["tier"] == "phash"]
    assert summary["tiers"]["phash"]["groups"] == len(phash) == 1
    [group] = phash
    assert group["id"].startswith("phs-")
    assert sorted(m["photo_path"] for m in group["members"]) == sorted(
        [str(front)] + [str(copies / n) for n in ("recompressed.jpg", "half.png", "double.jpg")])
    assert {m["factory"] for m in group["members"]} == {"factory_a", "factory_b"}
    # The group ids are in the payload, so searches can filter by them.
    from core.settings import Settings
    from core.store.edge import EdgeStore

    settings = Settings()
    store = EdgeStore(settings.embedded_store_dir, settings.qdrant_collection)
    try:
        assert {p.id for p in store.scroll({"group_phash": [group["id"]]})} == set(group["member_points"])
        # A crop indexed before hashes were stored gets its hash from its thumbnail on the next run.
        [point] = [p for p in store.scroll({"photo_path": [str(copies / "half.png")]})]
        store.set_payload([point.id], {"crop_phash": None})
    finally:
        store.close()
    again = json.loads(runner.invoke(app, ["cluster", "-o", str(tmp_path / "r2"), "--json"]).stdout)
    assert again["tiers"]["phash"]["groups"] == 1 and again["tiers"]["phash"]["status"] == {"unchanged": 1}
    off = json.loads(runner.invoke(app, ["cluster", "--hash-distance", "-1", "-o", str(tmp_path / "r3"),
                                         "--json"]).stdout)
    assert off["tiers"]["phash"]["groups"] == 0


def test_phash_tier_honours_decisions_scope_and_level():
    from core.duplicates.groups import ClusterSettings, Constraints, Items, cluster

    base = 0x0F0F_3C3C_5A5A_9999
    spec = {  # point: (factory, product, hash)
        "a1": ("A", "P1", base), "a2": ("A", "P1", base ^ 0b11), "b1": ("B", "Q1", base ^ 0b1000_0001),
        "c1": ("C", "R1", base ^ 0xFFFF_0000_0000_0000),  # another picture
    }
    ids = list(spec)
    payloads = [{"factory": f, "product_id": p, "photo_sha256": f"{k:0>64}", "crop_index": 0,
                 "crop_phash": f"{h:016x}"} for k, (f, p, h) in zip(ids, spec.values())]
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(4, 8)).astype(np.float32)  # the model does not matter to this tier
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    data = Items(ids, vectors, payloads)

    def phash(settings, constraints=Constraints()):
        return sorted(sorted(g.member_points) for g in cluster(data, settings, constraints=constraints)
                      if g.tier == "phash")

    plain = ClusterSettings(identical=False, duplicate_threshold=1.1, similar_threshold=1.1)
    assert phash(plain) == [["a1", "a2", "b1"]]
    assert phash(ClusterSettings(identical=False, duplicate_threshold=1.1, similar_threshold=1.1, hash_distance=1)) == []
    assert phash(ClusterSettings(identical=False, duplicate_threshold=1.1, similar_threshold=1.1, scope="cross-factory")) \
        == [["a1", "a2", "b1"]]  # a1 ~ b1 and a2 ~ b1 cross factories
    assert phash(ClusterSettings(identical=False, duplicate_threshold=1.1, similar_threshold=1.1,
                                 scope="within-factory")) == [["a1", "a2"]]
    product = phash(ClusterSettings(identical=False, duplicate_threshold=1.1, similar_threshold=1.1, level="product"))
    assert product == [["a1", "a2", "b1"]]  # products P1 and Q1 (all their crops covered)
    apart = Constraints(different=((f"crop:{'a1':0>64}:0", f"crop:{'b1':0>64}:0"),))
    groups = phash(plain, apart)
    assert not any({"a1", "b1"} <= set(g) for g in groups)
    assert phash(ClusterSettings(identical=False, duplicate_threshold=1.1, similar_threshold=1.1, hash_distance=None)) == []
