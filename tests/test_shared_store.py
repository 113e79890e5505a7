"""`ingest` commands while search-ui runs on the embedded store: real processes only.

search-ui (tiny CLIP, no detector) runs as a subprocess and holds the store; `python -m ingest`
runs in other subprocesses and reaches the store through it (core/store/host.py). Every
command's stdout, stderr and exit code must equal the same command's against a stopped UI.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from core.store.host import PREFIX, find_host, host_file
from tests.store_host_server import free_port
from tests.ui.browser import needs_browser
from tools.sample_catalogue import make_catalogue

STORE = Path("data") / "qdrant-edge"  # DATA_DIR is `data` under each run's working folder


def _env(port: int | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DATA_DIR": "data", "DETECTOR_MODEL": "none", "DEVICE": "cpu", "BATCH_SIZE": "8",
           "EMBED_PRECISION": "fp32", **extra}
    if port is not None:
        env["UI_PORT"] = str(port)
    return env


def ingest(cwd: Path, env: dict[str, str], *args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@contextlib.contextmanager
def search_ui(cwd: Path, env: dict[str, str], wait_until_serving: bool = True):
    """search-ui in a subprocess (its output in cwd/ui.log); yields (process, URL); stopped with Ctrl+C after."""
    log = open(cwd / "ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "search_ui"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        if wait_until_serving:
            _wait_serving(cwd, proc)
        yield proc, f"http://127.0.0.1:{env['UI_PORT']}/"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _wait_serving(cwd: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while find_host(cwd / STORE, "shoes") is None:
        assert proc.poll() is None, f"search-ui exited: {(cwd / 'ui.log').read_text()}"
        assert time.monotonic() < deadline, "search-ui did not serve the store in time"
        time.sleep(0.1)


def _normal(text: str) -> str:
    """Output with what legitimately differs between two runs (timings, timestamps) masked."""
    text = re.sub(r"\b\d+\.\d+s\b", "<T>s", text)
    text = re.sub(r'"(seconds|ingested_at|created_at)": ("[^"]*"|[0-9.e-]+)', r'"\1": "<T>"', text)
    return text


@pytest.fixture(scope="module")
def shoes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalogue") / "shoes"
    make_catalogue(root, factories=3, products_per_factory=3, variants_per_product=1)
    (root.parent / "empty").mkdir()
    return root


def _commands(shoes: Path) -> list[tuple[str, ...]]:
    return [
        ("add", str(shoes / "factory_a")),
        ("add", str(shoes / "factory_b"), str(shoes / "factory_c"), "--json"),
        ("stats",),
        ("stats", "--json"),
        ("search", "--text", "red leather boot", "--top-k", "4"),
        ("search", "--text", "red leather boot", "--factory", "factory_b", "--top-k", "3", "--json"),
        ("search", "--image", str(shoes / "factory_a" / "A100" / "front.jpg"), "--top-k", "2", "--json"),
        ("search", "--text", "boot", "--factory", "Factory_A"),  # unknown factory: exit 1, close name suggested
        ("search", "--text", "boot", "--factory", "nowhere", "--json"),
        ("add", str(shoes.parent / "empty")),  # no photos: exit 1
        ("add", str(shoes)),  # a folder of factories: exit 1
        ("add", str(shoes / "factory_a"), "--prune", "--dry-run", "--json"),
        ("remove", "--factory", "factory_b", "--yes", "--json"),
        ("remove", "--path", str(shoes / "factory_c" / "C100"), "--dry-run"),
        ("export", "points.jsonl.gz", "--factory", "factory_c"),
        ("cluster", "-o", "report"),
        ("eval", "--json"),
        ("stats", "--json"),
    ]


def test_every_command_answers_the_same_while_the_ui_runs(tmp_path, tiny_clip_dir, shoes):
    """The same commands, once against a stopped UI, once while search-ui holds the store; then the
    running UI (no restart) lists and finds what the CLI added."""
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    alone.mkdir()
    shared.mkdir()
    port = free_port()
    env = _env(port, CLIP_MODEL=str(tiny_clip_dir))
    expected = [ingest(alone, env, *command) for command in _commands(shoes)]
    assert not (alone / STORE / "shoes.host").exists()

    with search_ui(shared, env) as (ui, url):
        got = [ingest(shared, env, *command) for command in _commands(shoes)]
        assert ui.poll() is None  # the UI served all of it and still runs

        for command, want, have in zip(_commands(shoes), expected, got):
            assert "Traceback" not in have.stderr, have.stderr
            assert (have.returncode, _normal(have.stdout), _normal(have.stderr)) == \
                   (want.returncode, _normal(want.stdout), _normal(want.stderr)), command
        assert [r.returncode for r in got] == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
        assert "error: No factory 'Factory_A' in the index" in got[7].stderr  # the cases above are real errors
        assert json.loads(got[8].stdout)["exit_code"] == 1
        assert (shared / "points.jsonl.gz").stat().st_size > 0 and (shared / "report" / "groups.json").exists()

        # The running UI sees the factories the CLI added and removed, without a restart.
        client = Client(url, verbose=False)
        factories = client.predict(api_name="/factories")
        assert [name for _, name in factories] == ["factory_a", "factory_c"]
        _, status, hits = client.predict(query="red leather boot", factories=["factory_c"], top_k=5,
                                         api_name="/search_text")
        assert len(hits) == 5 and {h["payload"]["factory"] for h in hits} == {"factory_c"}, status
        cli_hits = json.loads(ingest(shared, env, "search", "--text", "red leather boot", "--factory", "factory_c",
                                     "--top-k", "5", "--json").stdout)["hits"]
        assert [h["point_id"] for h in hits] == [h["point_id"] for h in cli_hits]
    assert not host_file(shared / STORE, "shoes").exists()  # Ctrl+C: the UI removed its host file
    after = ingest(shared, env, "stats", "--json")  # and the CLI opens the store itself again
    assert after.returncode == 0 and _normal(after.stdout) == _normal(expected[-1].stdout)


def _read_until(stream, marker: str, timeout: float = 300) -> str:
    """Read a child's stream (bytes, unbuffered) until `marker` appears; returns what was read."""
    seen = bytearray()
    done = threading.Event()

    def pump():
        while marker.encode() not in seen:
            chunk = stream.read1(256) if hasattr(stream, "read1") else stream.read(1)
            if not chunk:
                break
            seen.extend(chunk)
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    assert done.wait(timeout), f"no {marker!r} in {seen.decode(errors='replace')!r}"
    text = seen.decode(errors="replace")
    assert marker in text, text
    return text


def test_writers_take_turns_searches_go_on_and_a_killed_writer_frees_the_ui(tmp_path, tiny_clip_dir, shoes):
    """A CLI writer holds the UI's write lease: another writer fails at once (or waits with --wait),
    searches in the UI and CLI reads go on, and killing the holder (kill -9) frees the lease."""
    port = free_port()
    env = _env(port, CLIP_MODEL=str(tiny_clip_dir))
    assert ingest(tmp_path, env, "add", str(shoes / "factory_a")).returncode == 0
    with search_ui(tmp_path, env) as (ui, url):
        client = Client(url, verbose=False)

        def prompting_remove() -> subprocess.Popen:
            proc = subprocess.Popen([sys.executable, "-m", "ingest", "remove", "--factory", "factory_a"], cwd=tmp_path,
                                    env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _read_until(proc.stderr, "[y/N]")  # it holds the lease while it asks
            return proc

        holder = prompting_remove()
        try:
            busy = ingest(tmp_path, env, "add", str(shoes / "factory_b"))
            assert busy.returncode == 1 and busy.stderr.count("\n") == 1, busy.stderr
            assert busy.stderr.startswith("error: The embedded store data/qdrant-edge/shoes is busy: process "
                                          f"{holder.pid} ")
            assert f"is writing to it through search-ui (process {ui.pid})" in busy.stderr and "--wait" in busy.stderr
            started = time.monotonic()
            _, status, hits = client.predict(query="boot", top_k=3, api_name="/search_text")  # the UI answers
            assert len(hits) == 3 and time.monotonic() - started < 30, status
            reads = ingest(tmp_path, env, "stats", "--json")  # reads need no lease
            assert reads.returncode == 0 and json.loads(reads.stdout)["points"] == 6
        finally:
            holder.kill()  # kill -9 while holding the lease
            holder.wait()
        freed = ingest(tmp_path, env, "add", str(shoes / "factory_b"), "--json")
        assert freed.returncode == 0 and json.loads(freed.stdout)["photos_added"] == 6, freed.stderr

        # --wait: the second writer says it waits, then goes on when the first is done.
        holder = prompting_remove()
        waiter = subprocess.Popen([sys.executable, "-m", "ingest", "add", str(shoes / "factory_c"), "--wait", "120",
                                   "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            line = waiter.stderr.readline()
            assert line == f"waiting up to 120s for the embedded store, in use by process {holder.pid} " \
                           f"(__main__.py remove) ...\n"
            assert waiter.poll() is None
            out, err = holder.communicate(b"y\n", timeout=120)
            assert holder.returncode == 0 and b"removed 6 crops of 6 photos" in out, err
            out, err = waiter.communicate(timeout=600)
        finally:
            for proc in (holder, waiter):
                if proc.poll() is None:
                    proc.kill()
        assert waiter.returncode == 0 and json.loads(out)["photos_added"] == 6, err
        assert [name for _, name in client.predict(api_name="/factories")] == ["factory_b", "factory_c"]


def _local_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    candidates = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("10.255.255.255", 1))  # no packet is sent: only picks the outgoing interface
        candidates.append(sock.getsockname()[0])
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    return next((a for a in candidates if not a.startswith("127.") and a != "0.0.0.0"), None)


def test_only_this_user_on_this_machine_reaches_the_store(tmp_path, tiny_clip_dir, shoes):
    """The token file is the owner's only (0600); no token or a wrong one is refused (401); a request
    from another address is refused (403) even with the token; the UI's login still guards the UI
    and does not stop the CLI."""
    port = free_port()
    env = _env(port, CLIP_MODEL=str(tiny_clip_dir), UI_HOST="0.0.0.0", UI_USERNAME="buyer", UI_PASSWORD="s3cret-pass")
    assert ingest(tmp_path, env, "add", str(shoes / "factory_a")).returncode == 0
    with search_ui(tmp_path, env) as (ui, url):
        record = host_file(tmp_path / STORE, "shoes")
        assert record.stat().st_mode & 0o777 == 0o600
        host = find_host(tmp_path / STORE, "shoes")
        assert host.pid == ui.pid and host.url == f"http://127.0.0.1:{port}"
        ping = f"{host.url}{PREFIX}/ping"
        assert httpx.get(ping).status_code == 401
        assert httpx.get(ping, headers={"Authorization": "Bearer not-the-token"}).status_code == 401
        assert httpx.post(f"{host.url}{PREFIX}/call/shoes/count", content="{}").status_code == 401
        assert httpx.post(f"{host.url}{PREFIX}/call/shoes/delete", content='{"ids": []}',
                          headers={"Authorization": f"Bearer {host.token}"}).status_code == 409  # no write lease
        ok = httpx.get(ping, headers={"Authorization": f"Bearer {host.token}"})
        assert ok.status_code == 200 and ok.json()["pid"] == ui.pid
        address = _local_address()
        if address is not None:
            remote = httpx.get(f"http://{address}:{port}{PREFIX}/ping", headers={"Authorization": f"Bearer {host.token}"})
            assert remote.status_code == 403
        with pytest.raises(Exception):
            Client(url, verbose=False)  # the UI itself wants its login
        added = ingest(tmp_path, env, "add", str(shoes / "factory_b"))
        assert added.returncode == 0 and added.stdout.startswith("factory_b: 6 photos seen, 6 added"), added.stderr
        logged_in = Client(url, auth=("buyer", "s3cret-pass"), verbose=False)
        assert [name for _, name in logged_in.predict(api_name="/factories")] == ["factory_a", "factory_b"]
    if address is None:
        pytest.skip("no non-loopback address here: the 403 case was not exercised")


def test_progress_bar_in_a_terminal_while_the_ui_runs(tmp_path, tiny_clip_dir, shoes):
    """On a terminal `ingest add` draws its progress bar as usual: the command runs here, only the
    store's operations go to the UI."""
    port = free_port()
    env = _env(port, CLIP_MODEL=str(tiny_clip_dir), COLUMNS="100")
    assert ingest(tmp_path, env, "add", str(shoes / "factory_a")).returncode == 0
    with search_ui(tmp_path, env):
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "ingest", "add", str(shoes / "factory_b")], cwd=tmp_path,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        drawn = bytearray()
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            drawn.extend(chunk)
        os.close(master)
        out = proc.stdout.read().decode()
        assert proc.wait(timeout=60) == 0, drawn.decode(errors="replace")
    terminal = drawn.decode(errors="replace")
    assert "ingest factory_b" in terminal and "6/6" in terminal, terminal
    assert out.startswith("factory_b: 6 photos seen, 6 added (6 crops)")


def test_a_starting_ui_is_waited_for_and_a_dead_one_is_ignored(tmp_path, tiny_clip_dir, shoes):
    """While search-ui loads its models it holds the store but does not serve yet: `--wait` waits
    until it serves, then goes through it. After a kill -9 its host file is stale: the CLI opens the
    store itself. A CLI writer whose UI dies mid-command stops in one line."""
    port = free_port()
    env = _env(port, CLIP_MODEL=str(tiny_clip_dir))
    assert ingest(tmp_path, env, "add", str(shoes / "factory_a")).returncode == 0
    lock = tmp_path / STORE / "shoes.lock"
    with search_ui(tmp_path, env, wait_until_serving=False) as (ui, url):
        deadline = time.monotonic() + 300
        while not lock.read_text().startswith(f"{ui.pid} "):  # the UI holds the store, models loading
            assert ui.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        served_already = find_host(tmp_path / STORE, "shoes") is not None
        stats = ingest(tmp_path, env, "stats", "--wait", "300", "--json")
        assert stats.returncode == 0 and json.loads(stats.stdout)["points"] == 6, stats.stderr
        if not served_already:
            assert stats.stderr.startswith(f"waiting up to 300s for the embedded store, in use by process {ui.pid} ")
        assert find_host(tmp_path / STORE, "shoes").pid == ui.pid

        # A writer holding the lease when the UI dies: one line, exit 1.
        holder = subprocess.Popen([sys.executable, "-m", "ingest", "remove", "--factory", "factory_a"], cwd=tmp_path,
                                  env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _read_until(holder.stderr, "[y/N]")
        ui.kill()
        ui.wait()
        out, err = holder.communicate(b"y\n", timeout=120)
        err = err.decode()
        assert holder.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"Lost the connection to search-ui (process {ui.pid})" in err

    assert host_file(tmp_path / STORE, "shoes").exists() and find_host(tmp_path / STORE, "shoes") is None
    alone = ingest(tmp_path, env, "stats", "--json")  # the dead UI's file is ignored: the CLI opens the store
    assert alone.returncode == 0 and json.loads(alone.stdout)["points"] == 6, alone.stderr


@needs_browser
def test_the_browser_sees_a_factory_the_cli_adds_while_the_page_is_open(tmp_path, tiny_clip_dir, shoes, page_of,
                                                                         shot):
    """A person keeps the page open; `ingest add` in another terminal; the factory list offers the
    new factory on the Search tab and a search filtered to it finds its photos, no reload."""
    from playwright.sync_api import expect

    port = free_port()
    env = _env(port, CLIP_MODEL=str(tiny_clip_dir))
    assert ingest(tmp_path, env, "add", str(shoes / "factory_a")).returncode == 0
    with search_ui(tmp_path, env) as (_, url):
        page = page_of(url)
        page.locator("#factories input").click()
        expect(page.get_by_role("option", name=re.compile(r"^factory_a \(\d+\)$"))).to_be_visible(timeout=30_000)
        expect(page.get_by_role("option", name=re.compile(r"^factory_c"))).to_have_count(0)
        page.keyboard.press("Escape")
        page.locator("#query-text textarea").click()  # the list loses focus, as a person moves on

        added = ingest(tmp_path, env, "add", str(shoes / "factory_c"))
        assert added.returncode == 0, added.stderr

        page.locator("#factories input").click()
        expect(page.get_by_role("option", name=re.compile(r"^factory_c \(\d+\)$"))).to_be_visible(timeout=30_000)
        page.get_by_role("option", name=re.compile(r"^factory_c \(\d+\)$")).click()
        page.keyboard.press("Escape")
        page.locator("#query-text textarea").fill("red leather boot")
        page.locator("#search-text-button").click()
        expect(page.locator("#status")).to_contain_text("results for “red leather boot”", timeout=30_000)
        captions = page.locator("#results .caption-label").all_inner_texts()
        assert captions and all(c.startswith("factory_c · ") for c in captions), captions
        shot(page, "factory-added-while-open")
