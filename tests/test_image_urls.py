"""Photos by URL against a real HTTP server on 127.0.0.1: every limit, every refusal, one line each."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from core.errors import ImageUrlError
from core.search.image_urls import UrlLimits, address_allowed, fetch_photo, save_photo

MB = 1024 * 1024


def _jpeg(size=(64, 48), colour=(190, 30, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def _bomb_png() -> bytes:
    """A PNG whose header declares 30000 x 30000 pixels (decompression bomb)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _large_jpeg(size=(2400, 1800)) -> bytes:
    """A photo past DECODE_MAX_SIDE (1600), with detail that a reduction changes."""
    import numpy as np

    rng = np.random.default_rng(7)
    small = rng.integers(0, 255, size=(size[1] // 40, size[0] // 40, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


LARGE = _large_jpeg()


class Handler(BaseHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body=b"", content_type="image/jpeg", headers=None, length=True):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        Handler.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        if path == "/good.jpg":
            self._send(200, _jpeg(), "image/jpeg; charset=binary")
        elif path == "/large.jpg":
            self._send(200, LARGE, "image/jpeg")
        elif path == "/slow.jpg":  # headers, then a byte now and then: never done
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(600):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif path == "/slow-headers.jpg":  # a header line a byte at a time
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for byte in b"X-Slow: " + b"a" * 600:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif path == "/huge.jpg":  # declares 50 MB
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(50 * MB))
            self.end_headers()
        elif path == "/endless.jpg":  # no length: streams until the client stops reading
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"\0" * (64 * 1024))
            except OSError:
                pass
        elif path == "/page.html":
            self._send(200, b"<html>a shop page</html>", "text/html; charset=utf-8")
        elif path == "/untyped":
            self._send(200, _jpeg(), content_type=None)
        elif path == "/liar.jpg":
            self._send(200, b"<html>not really a jpeg</html>", "image/jpeg")
        elif path == "/bomb.png":
            self._send(200, _bomb_png(), "image/png")
        elif path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif path == "/hop1":
            self._send(301, headers={"Location": "/hop2"})
        elif path == "/hop2":
            self._send(307, headers={"Location": "good.jpg?from=hop2"})
        elif path == "/to-file":
            self._send(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/to-metadata":
            self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        else:
            self._send(404, b"not found", "text/plain")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


LOCAL = UrlLimits(max_bytes=1 * MB, timeout=1.5, allow_private=True)


def _refused(url, limits=LOCAL) -> str:
    with pytest.raises(ImageUrlError) as caught:
        fetch_photo(url, limits, max_pixels=80_000_000)
    message = str(caught.value)
    assert message.startswith("The image URL cannot be used: ") or "IMAGE_URLS=false" in message
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_good_image_and_redirects_within_the_limit(server):
    photo = fetch_photo(f"{server}/good.jpg", LOCAL, max_pixels=80_000_000)
    assert photo.size == (64, 48) and photo.mode == "RGB" and photo.getpixel((10, 10))[0] > 150
    Handler.requests.clear()
    assert fetch_photo(f"{server}/hop1", LOCAL, max_pixels=80_000_000).size == (64, 48)
    assert Handler.requests == ["/hop1", "/hop2", "/good.jpg?from=hop2"]  # two redirects, relative ones resolved


def test_a_slow_server_is_cut_at_the_time_limit(server):
    for path in ("/slow.jpg", "/slow-headers.jpg"):
        started = time.monotonic()
        message = _refused(f"{server}{path}")
        elapsed = time.monotonic() - started
        assert "took longer than the 1.5 s limit (IMAGE_URL_TIMEOUT)" in message, message
        assert 1.4 < elapsed < 3.0, elapsed  # a hard limit, not one per read


def test_size_limits(server):
    assert _refused(f"{server}/huge.jpg") == (
        "The image URL cannot be used: it is 50.0 MB, more than the 1 MB limit (IMAGE_URL_MAX_MB).")
    assert _refused(f"{server}/endless.jpg") == (
        "The image URL cannot be used: it is larger than the 1 MB limit (IMAGE_URL_MAX_MB).")


def test_wrong_type_lies_and_bombs(server):
    assert _refused(f"{server}/page.html") == (
        "The image URL cannot be used: it is text/html, not an image (Content-Type image/...).")
    assert "of no stated type, not an image" in _refused(f"{server}/untyped")
    assert _refused(f"{server}/liar.jpg") == (
        "The image URL cannot be used: not an image Pillow can read (unknown format or corrupt header).")
    assert "image too large: 900,000,000 pixels" in _refused(f"{server}/bomb.png")


def test_redirect_loop_404_and_other_schemes(server):
    assert _refused(f"{server}/loop") == "The image URL cannot be used: more than 3 redirects."
    assert _refused(f"{server}/missing.jpg") == "The image URL cannot be used: the server answered 404 Not Found."
    assert _refused(f"{server}/to-file") == "The image URL cannot be used: only http:// and https:// URLs are fetched, not file:."
    assert "169.254.169.254 is a link-local, reserved or other non-public address, which is never fetched" in \
        _refused(f"{server}/to-metadata")
    assert "start the URL with one of them" in _refused("www.example.com/shoe.jpg")
    assert "not ftp:" in _refused("ftp://example.com/shoe.jpg")
    assert "port is not a number" in _refused("http://example.com:99999/x.jpg")
    assert "spaces or control characters" in _refused("http://example.com/a shoe.jpg")
    assert _refused("   ") == "The image URL cannot be used: the URL is empty."


def test_loopback_is_refused_unless_allowed_and_urls_can_be_turned_off(server):
    strict = UrlLimits(max_bytes=MB, timeout=1.5)
    assert _refused(f"{server}/good.jpg", strict) == (
        "The image URL cannot be used: 127.0.0.1 is a loopback or private-network address, which is not fetched "
        "(IMAGE_URL_ALLOW_PRIVATE=true allows intranet servers).")
    port = server.rsplit(":", 1)[1]
    assert "localhost (127.0.0.1) is a loopback" in _refused(f"http://localhost:{port}/good.jpg", strict)
    assert "IMAGE_URLS=false" in _refused(f"{server}/good.jpg", UrlLimits(enabled=False, allow_private=True))


@pytest.mark.parametrize("address, strict, private", [
    ("93.184.215.14", True, True), ("2606:4700::1111", True, True),
    ("127.0.0.1", False, True), ("::1", False, True), ("10.1.2.3", False, True), ("192.168.1.20", False, True),
    ("172.16.0.5", False, True), ("fd00::5", False, True), ("::ffff:127.0.0.1", False, True),
    ("169.254.169.254", False, False), ("fe80::1", False, False), ("0.0.0.0", False, False),
    ("224.0.0.1", False, False), ("240.0.0.1", False, False), ("::ffff:169.254.169.254", False, False),
])
def test_address_policy(address, strict, private):
    assert address_allowed(address) is strict
    assert address_allowed(address, allow_private=True) is private


def test_save_photo_keeps_a_png_for_the_page(server, tmp_path):
    path = save_photo(f"{server}/good.jpg", LOCAL, 80_000_000, tmp_path / "url-photos")
    assert path.parent == tmp_path / "url-photos" and path.suffix == ".png"
    assert Image.open(path).size == (64, 48)


def test_a_url_photo_is_decoded_as_a_query_file_is(server, tmp_path):
    """The same decode as a query file (core.vision.crops.load_query_photo): reduced to
    DECODE_MAX_SIDE (JPEG draft scale included), pixel for pixel the same image."""
    import numpy as np

    from core.vision.crops import load_query_photo

    path = tmp_path / "large.jpg"
    path.write_bytes(LARGE)
    limits = UrlLimits(max_bytes=8 * MB, timeout=5, allow_private=True)
    fetched = fetch_photo(f"{server}/large.jpg", limits, 80_000_000, 1600)
    from_file = load_query_photo(path, 80_000_000, 1600)
    assert max(fetched.size) <= 1600 and fetched.size == from_file.size
    assert np.array_equal(np.asarray(fetched), np.asarray(from_file))
    assert fetch_photo(f"{server}/large.jpg", limits, 80_000_000).size == (2400, 1800)  # no side given: full size
