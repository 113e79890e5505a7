"""`ingest add`: mistakes that used to look like success (a folder with no photos, a file, a folder
of factories), several folders in one command, --prune of deleted photos, HEIC/AVIF photos.

Every command runs the real CLI through Typer's CliRunner on real files and a real store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import two_shoes_photo
from tests.helpers import cli_json as _json
from tests.helpers import run_cli as _run
from tools.sample_catalogue import make_catalogue

HEIC = Path(__file__).parent / "fixtures" / "shoe.heic"  # 96x64, written by pillow-heif 1.8.1 (libheif 1.23.6)


@pytest.fixture
def env(cli_env, monkeypatch):
    monkeypatch.setenv("BATCH_SIZE", "8")
    return cli_env


@pytest.fixture
def catalogue(env):
    return make_catalogue(env / "shoes", factories=2, products_per_factory=3, variants_per_product=1)


def _stats():
    return _json(_run("stats", "--json"))


def _one_line_error(result, *fragments: str) -> str:
    """Exit 1, one `error:` line on stderr holding every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return result.stderr


def _no_collection(env: Path) -> bool:
    return not (env / "data" / "qdrant-edge" / "shoes.json").exists()


# --------------------------------------------------------------------------- folders with nothing to add


def test_empty_folder_and_folder_of_text_files_exit_1(env):
    empty = env / "empty"
    empty.mkdir()
    _one_line_error(_run("add", empty), f"{empty} holds no photos (it is empty)", "ingest add shoes/factory_a")

    notes = env / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "a.txt").write_text("x")
    (notes / "sub" / "b.txt").write_text("x")
    (notes / "list.csv").write_text("x")
    (notes / ".hidden.jpg").write_bytes(b"")  # hidden: not a photo to index
    _one_line_error(_run("add", notes), f"{notes} holds no photos (found 2 .txt, 1 .csv)", ".heic")

    as_json = _run("add", notes, "--json")
    assert as_json.exit_code == 1
    body = json.loads(as_json.stdout)  # --json: stdout is still one JSON object
    assert body["exit_code"] == 1 and body["error"].startswith(f"{notes} holds no photos")
    assert _no_collection(env)  # nothing written, no model loaded


def test_a_file_where_a_folder_is_expected(env, catalogue):
    text = env / "readme.txt"
    text.write_text("hello")
    _one_line_error(_run("add", text), f"{text} is a file, not a photo or a folder of photos")
    # With several paths (`ingest add shoes/*` catching a stray file) every path must be a folder.
    stray = catalogue.root / "price_list.csv"
    stray.write_text("a,b\n")
    result = _run("add", catalogue.factory_dir("factory_a"), stray, "--json")
    _one_line_error(result, f"{stray} is a file, not a factory folder", "ingest add shoes/*/")
    assert json.loads(result.stdout)["exit_code"] == 1
    assert _no_collection(env)  # refused before anything was added, factory_a included
    # One photo on its own is still accepted (factory: its folder, product: its stem).
    photo = two_shoes_photo(env / "factory_z" / "P1.jpg")
    report = _json(_run("add", photo, "--json"))
    assert (report["factory"], report["photos_added"]) == ("factory_z", 1)


def test_folder_of_factories_is_refused_and_points_at_the_right_command(env, catalogue):
    shoes = catalogue.root
    result = _run("add", shoes)
    _one_line_error(result, f"{shoes} holds factory folders (factory_a, factory_b), not products",
                    f"ingest add {shoes}/*", f"ingest add {shoes}/factory_a", "--one-factory")
    assert _stats()["points"] == 0
    # The same with a trailing slash (as a shell completes it).
    _one_line_error(_run("add", f"{shoes}/"), "holds factory folders")
    # --one-factory says it is meant: one factory `shoes`, product ids = the factory subfolders.
    report = _json(_run("add", shoes, "--one-factory", "--json"))
    assert (report["factory"], report["photos_added"]) == ("shoes", 12)


def test_subfolder_named_like_an_indexed_factory_is_refused(env, catalogue):
    _json(_run("add", catalogue.factory_dir("factory_a"), "--json"))
    # A new delivery: photos loose in factory folders (one level down, like product folders).
    delivery = env / "delivery"
    two_shoes_photo(delivery / "factory_a" / "X1.jpg")
    two_shoes_photo(delivery / "factory_c" / "Y1.jpg")
    _one_line_error(_run("add", delivery), "holds factory folders (factory_a)", f"ingest add {delivery}/*")
    assert set(_stats()["factories"]) == {"factory_a"}
    # Product folders named like no factory are the normal layout.
    report = _json(_run("add", catalogue.factory_dir("factory_b"), "--json"))
    assert report["photos_added"] == 6


def test_dot_is_the_folder_it_names(env, catalogue, monkeypatch):
    monkeypatch.chdir(catalogue.factory_dir("factory_b"))
    assert _json(_run("add", ".", "--json"))["factory"] == "factory_b"


# --------------------------------------------------------------------------- several folders


def test_several_folders_each_their_own_factory(env, catalogue):
    folders = [catalogue.factory_dir("factory_a"), catalogue.factory_dir("factory_b")]
    report = _json(_run("add", *folders, folders[0], "--json"))  # a folder named twice counts once
    assert (report["factory"], report["factories"]) == (None, ["factory_a", "factory_b"])
    assert (report["photos_seen"], report["photos_added"], report["crops_added"]) == (12, 12, 12)
    assert [(f["path"], f["factory"], f["photos_added"]) for f in report["folders"]] == [
        (str(folders[0]), "factory_a", 6), (str(folders[1]), "factory_b", 6)]
    assert _stats()["factories"] == {"factory_a": {"crops": 6, "photos": 6}, "factory_b": {"crops": 6, "photos": 6}}

    human = _run("add", *folders)
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["factory_a", "factory_b", "total (2 factories)"]
    assert lines[2].startswith("total (2 factories): 12 photos seen, 0 added (0 crops), 12 unchanged")


def test_one_folder_json_keeps_its_shape(env, catalogue):
    report = _json(_run("add", catalogue.factory_dir("factory_a"), "--json"))
    assert report["factory"] == "factory_a" and report["factories"] == ["factory_a"]
    [folder] = report["folders"]
    for key in ("factory", "photos_seen", "photos_added", "photos_unchanged", "photos_updated", "photos_failed",
                "crops_added", "photos_pruned", "crops_pruned", "pruned"):
        assert report[key] == folder[key], key


def test_factory_or_manifest_with_several_folders_is_a_usage_error(env, catalogue):
    folders = [catalogue.factory_dir("factory_a"), catalogue.factory_dir("factory_b")]
    result = _run("add", *folders, "--factory", "acme")
    message = " ".join(result.output.replace("│", " ").split())  # without the box around it
    assert result.exit_code == 2 and "--factory: only with one folder" in message
    assert _run("add", folders[0], "--dry-run").exit_code == 2  # --dry-run goes with --prune
    assert _no_collection(env)


def test_several_folders_with_a_failed_photo_exit_1_and_report_it(env, catalogue):
    broken = catalogue.factory_dir("factory_b") / "B100" / "broken.jpg"
    broken.write_text("not a photo")
    result = _run("add", catalogue.factory_dir("factory_a"), catalogue.factory_dir("factory_b"), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["photos_added"] == 12 and [f["path"] for f in report["photos_failed"]] == [str(broken)]
    assert report["folders"][0]["photos_failed"] == [] and len(report["folders"][1]["photos_failed"]) == 1


# --------------------------------------------------------------------------- --prune


def test_prune_removes_deleted_photos_only_and_dry_run_changes_nothing(env, catalogue):
    folder = catalogue.factory_dir("factory_a")
    _json(_run("add", folder, catalogue.factory_dir("factory_b"), "--json"))
    by_path = {h["payload"]["photo_path"]: h["payload"] for h in
               _json(_run("search", "--text", "x", "--top-k", "100", "--json"))["hits"]}
    a100, a101 = sorted((folder / "A100").iterdir()), sorted((folder / "A101").iterdir())
    deleted = a100[0]
    thumbnail = env / "data" / by_path[str(deleted)]["crop_path"]
    assert thumbnail.is_file()
    deleted.unlink()
    moved = folder / "A102" / "moved_here.jpg"
    a101[0].rename(moved)  # moved within the folder: an update, not a delete
    outside = catalogue.factory_dir("factory_b") / "B100"
    gone_elsewhere = sorted(outside.iterdir())[0]
    gone_elsewhere.unlink()  # another factory's photo: never pruned from factory_a's folder

    dry = _json(_run("add", folder, "--prune", "--dry-run", "--json"))
    assert (dry["dry_run"], dry["photos_pruned"], dry["crops_pruned"], dry["pruned"]) == (True, 1, 1, [str(deleted)])
    assert (dry["photos_added"], dry["photos_updated"]) == (0, 0)
    assert _stats()["points"] == 12 and thumbnail.is_file()  # nothing changed
    human_dry = _run("add", folder, "--prune", "--dry-run")
    assert human_dry.exit_code == 0
    assert human_dry.stdout.splitlines() == [
        "factory_a: 5 photos in the folder; would prune 1 photos (1 crops) whose files are gone (dry run: nothing changed)",
        f"  would prune {deleted}"]

    done = _json(_run("add", folder, "--prune", "--json"))
    assert (done["photos_pruned"], done["crops_pruned"], done["pruned"]) == (1, 1, [str(deleted)])
    assert (done["photos_updated"], done["photos_unchanged"], done["photos_added"]) == (1, 4, 0)
    assert not thumbnail.exists()
    stats = _stats()["factories"]
    assert stats == {"factory_a": {"crops": 5, "photos": 5}, "factory_b": {"crops": 6, "photos": 6}}
    paths = {h["payload"]["photo_path"] for h in _json(_run("search", "--text", "x", "--top-k", "100", "--json"))["hits"]}
    assert str(moved) in paths and str(gone_elsewhere) in paths and str(deleted) not in paths
    again = _json(_run("add", folder, "--prune", "--json"))
    assert (again["photos_pruned"], again["photos_unchanged"]) == (0, 5)


def test_prune_only_looks_under_the_given_folder(env, catalogue):
    folder = catalogue.factory_dir("factory_a")
    _json(_run("add", folder, "--json"))
    in_a100 = sorted((folder / "A100").iterdir())[0]
    in_a101 = sorted((folder / "A101").iterdir())[0]
    in_a100.unlink()
    in_a101.unlink()
    report = _json(_run("add", folder / "A101", "--factory", "factory_a", "--prune", "--json"))
    assert report["pruned"] == [str(in_a101)]  # A100's deleted photo is outside A101: kept
    assert _stats()["factories"]["factory_a"]["photos"] == 5


def test_prune_keeps_a_photo_that_is_still_on_disk_but_not_listed(env, catalogue):
    """A photo indexed through a path the folder walk does not list now (a hidden folder, not
    followed) is not deleted: only files gone from disk are pruned."""
    folder = catalogue.factory_dir("factory_a")
    hidden = folder / "A100" / "archive"
    two_shoes_photo(hidden / "old.jpg")
    _json(_run("add", folder, "--json"))
    hidden.rename(folder / "A100" / ".archive")  # now hidden: the walk skips it...
    (folder / "A100" / "archive").symlink_to(folder / "A100" / ".archive")  # ...and a folder link is not followed
    report = _json(_run("add", folder, "--prune", "--json"))
    assert report["photos_pruned"] == 0 and _stats()["factories"]["factory_a"]["photos"] == 7


def test_prune_needs_a_folder(env, catalogue):
    result = _run("add", catalogue.photos[0].path, "--prune")
    _one_line_error(result, "is a file: --prune needs the factory folder it lies in")


# --------------------------------------------------------------------------- photo formats


def test_heic_and_avif_photos_are_indexed(env):
    folder = env / "factory_h"
    folder.mkdir()
    shutil.copy(HEIC, folder / "iphone.heic")
    shutil.copy(HEIC, folder / "IMG_2.HEIF")
    with open(folder / "IMG_2.HEIF", "ab") as handle:
        handle.write(b"\0")  # other bytes: another photo
    img = Image.new("RGB", (80, 60), (245, 245, 245))
    img.paste(Image.new("RGB", (40, 30), (40, 70, 170)), (20, 15))
    img.save(folder / "web.avif")
    report = _json(_run("add", folder, "--json"))
    assert (report["photos_seen"], report["photos_added"], report["photos_failed"]) == (3, 3, [])
    hits = _json(_run("search", "--image", str(folder / "iphone.heic"), "--top-k", "3", "--json"))["hits"]
    top = hits[0]["payload"]
    assert top["photo_path"] in {str(folder / "iphone.heic"), str(folder / "IMG_2.HEIF")} and hits[0]["score"] > 0.999
    assert (top["photo_width"], top["photo_height"]) == (96, 64)
    avif = next(h["payload"] for h in hits if h["payload"]["photo_path"].endswith("web.avif"))
    assert (avif["photo_width"], avif["photo_height"]) == (80, 60)


def test_heic_without_a_decoder_is_skipped_with_the_reason(env, monkeypatch):
    import core.vision.images

    monkeypatch.setattr(core.vision.images, "_heif_registered", False)  # as if pi-heif were not installed
    folder = env / "factory_h"
    folder.mkdir()
    shutil.copy(HEIC, folder / "iphone.heic")
    two_shoes_photo(folder / "ok.jpg")
    result = _run("add", folder, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["photos_added"] == 1
    assert report["photos_failed"] == [{"path": str(folder / "iphone.heic"), "error":
                                        "HEIC/HEIF photo, but no HEIF decoder is installed (pip install pi-heif)"}]
