"""Photos given by URL: fetched within limits, then decoded by the same safe loader as files.

What a fetch allows (all checked on every redirect hop):
- http and https only; at most MAX_REDIRECTS redirects;
- the host's addresses must all be public (`ipaddress.is_global`); with `allow_private`
  (IMAGE_URL_ALLOW_PRIVATE) loopback and private networks are allowed too, link-local (cloud
  metadata at 169.254.169.254), multicast and unspecified addresses never. The connection goes
  to the address that was checked, so a second DNS answer cannot swap in another one;
- the answer must be 200 with a Content-Type of image/*; its body at most `max_bytes`
  (a larger Content-Length is refused before reading, a body without one is cut at the limit);
- the whole fetch, DNS and redirects included, within `timeout` seconds: a watchdog shuts the
  socket at the deadline, so a server that sends one byte a second cannot hold a request;
- the bytes are decoded as a query photo file is (`core.vision.crops.load_query_photo`: size limit
  in pixels, EXIF, any mode to RGB, reduced to DECODE_MAX_SIDE when given).

Proxies (HTTP_PROXY) are not used. Every failure is one ImageUrlError line.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from core.errors import BadImage, ImageUrlError

MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
CHUNK = 64 * 1024
USER_AGENT = "shoe-search/1 (photo search by URL)"
_SUFFIXES = {"image/heic": ".heic", "image/heif": ".heif", "image/avif": ".avif", "image/jpeg": ".jpg",
             "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif"}


@dataclass(frozen=True)
class UrlLimits:
    """What a URL fetch may do; `from_settings` reads IMAGE_URLS, IMAGE_URL_MAX_MB,
    IMAGE_URL_TIMEOUT and IMAGE_URL_ALLOW_PRIVATE."""

    enabled: bool = True
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0
    allow_private: bool = False
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def from_settings(cls, settings) -> UrlLimits:
        return cls(settings.image_urls, int(settings.image_url_max_mb * 1024 * 1024), settings.image_url_timeout,
                   settings.image_url_allow_private)


def _fail(reason: str) -> ImageUrlError:
    return ImageUrlError(f"The image URL cannot be used: {reason}.")


def address_allowed(address: str, allow_private: bool = False) -> bool:
    """Whether a fetch may connect to `address` (an IP literal)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    if ip.is_global:
        return True
    return allow_private and (ip.is_loopback or (ip.is_private and not ip.is_reserved))


def _check_url(url: str):
    if len(url) > MAX_URL_LENGTH:
        raise _fail(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise _fail("the URL holds spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise _fail("only http:// and https:// URLs are fetched" + (
            f", not {parts.scheme}:" if parts.scheme else " (start the URL with one of them)"))
    if not parts.hostname:
        raise _fail("the URL names no host")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise _fail("the URL's port is not a number from 1 to 65535") from None
    return parts, port


def _resolve(host: str, port: int, limits: UrlLimits, deadline: float) -> str:
    """The address to connect to; refuses a host with any address the limits forbid."""
    answer: dict[str, object] = {}

    def lookup() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            answer["error"] = exc

    worker = threading.Thread(target=lookup, daemon=True)  # getaddrinfo has no timeout of its own
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise _fail(f"looking up {host} took longer than the {limits.timeout:g} s limit (IMAGE_URL_TIMEOUT)")
    if "error" in answer:
        raise _fail(f"the host {host} cannot be found")
    addresses = list(dict.fromkeys(info[4][0] for info in answer["infos"]))  # type: ignore[union-attr]
    if not addresses:
        raise _fail(f"the host {host} cannot be found")
    refused = [a for a in addresses if not address_allowed(a, limits.allow_private)]
    if refused:
        private = address_allowed(refused[0], allow_private=True)
        where = host if host == refused[0] else f"{host} ({refused[0]})"
        if private:
            raise _fail(f"{where} is a loopback or private-network address, which is not fetched "
                        f"(IMAGE_URL_ALLOW_PRIVATE=true allows intranet servers)")
        raise _fail(f"{where} is a link-local, reserved or other non-public address, which is never fetched")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a checked address, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = self.live_socket = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is verified for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self.live_socket = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_image_bytes(url: str, limits: UrlLimits) -> tuple[bytes, str]:
    """The body and Content-Type of an image URL, within `limits` (see the module docstring)."""
    if not limits.enabled:
        raise ImageUrlError("Search by image URL is turned off here (IMAGE_URLS=false): download the photo and "
                            "upload it instead.")
    url = (url or "").strip()
    if not url:
        raise _fail("the URL is empty")
    deadline = time.monotonic() + limits.timeout
    for _ in range(limits.max_redirects + 1):
        parts, port = _check_url(url)
        address = _resolve(parts.hostname, port, limits, deadline)
        kind = _PinnedHTTPS if parts.scheme.lower() == "https" else _PinnedHTTP
        remaining = max(0.01, deadline - time.monotonic())
        conn = kind(parts.hostname, port, address, remaining)
        watchdog = threading.Timer(remaining, _shut, (conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*",
                                                 "Accept-Encoding": "identity"})
            response = conn.getresponse()
            _check_time(deadline, limits)  # headers cut short by the watchdog look complete
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise _fail(f"the server answered {response.status} (a redirect) without saying where to")
                url = urljoin(url, location.strip())
                continue
            if response.status != 200:
                raise _fail(f"the server answered {response.status} {response.reason}".rstrip())
            content_type = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
            if not content_type.startswith("image/"):
                raise _fail(f"it is {content_type or 'of no stated type'}, not an image (Content-Type image/...)")
            return _read_body(response, limits, deadline), content_type
        except ImageUrlError:
            raise
        except ssl.SSLError as exc:
            raise _fail(f"the secure connection to {parts.hostname} failed ({exc.reason or exc})") from None
        except (OSError, http.client.HTTPException) as exc:
            _check_time(deadline, limits)
            raise _fail(f"the connection to {parts.hostname} failed ({type(exc).__name__}: {exc})") from None
        finally:
            watchdog.cancel()
            conn.close()
    raise _fail(f"more than {limits.max_redirects} redirects")


def _check_time(deadline: float, limits: UrlLimits) -> None:
    if time.monotonic() >= deadline - 0.05:
        raise _fail(f"fetching took longer than the {limits.timeout:g} s limit (IMAGE_URL_TIMEOUT)")


def _shut(conn: http.client.HTTPConnection) -> None:
    """The deadline passed: end whatever read or write the fetch is blocked in. (`conn.sock` is
    None once a response that closes the connection took the socket over, so the socket is
    kept aside when it is made.)"""
    sock = getattr(conn, "live_socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _read_body(response: http.client.HTTPResponse, limits: UrlLimits, deadline: float) -> bytes:
    limit_mb = f"{limits.max_bytes / (1024 * 1024):g} MB"
    declared = response.getheader("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > limits.max_bytes:
        raise _fail(f"it is {int(declared) / (1024 * 1024):.1f} MB, more than the {limit_mb} limit (IMAGE_URL_MAX_MB)")
    chunks, size = [], 0
    while True:
        chunk = response.read1(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limits.max_bytes:
            raise _fail(f"it is larger than the {limit_mb} limit (IMAGE_URL_MAX_MB)")
        chunks.append(chunk)
    _check_time(deadline, limits)  # a body ended by the watchdog looks like a short one
    if declared and declared.strip().isdigit() and size < int(declared):
        raise _fail(f"the download stopped after {size} of {int(declared)} bytes")
    return b"".join(chunks)


def fetch_photo(url: str, limits: UrlLimits, max_pixels: int, decode_max_side: int | None = None):
    """The photo at `url` as an upright RGB image (Pillow), or ImageUrlError with one reason.
    Decoded as a query photo file is (`core.vision.crops.load_query_photo`: reduced to
    `decode_max_side` as ingest reduces catalogue photos; None = full size), so a URL query and a
    file query of the same photo give the same crops."""
    data, content_type = fetch_image_bytes(url, limits)
    with tempfile.TemporaryDirectory(prefix="shoe-url-") as folder:
        path = Path(folder) / f"photo{_SUFFIXES.get(content_type, '.img')}"
        path.write_bytes(data)
        try:
            from core.vision.crops import load_query_photo

            return load_query_photo(path, max_pixels, decode_max_side)
        except BadImage as exc:
            raise _fail(str(exc)) from None


def save_photo(url: str, limits: UrlLimits, max_pixels: int, folder: Path, decode_max_side: int | None = None) -> Path:
    """Fetch and check the photo at `url`, then keep it as a PNG in `folder` (for the UI to show)."""
    photo = fetch_photo(url, limits, max_pixels, decode_max_side)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix="url-", suffix=".png", delete=False) as out:
        photo.save(out, format="PNG", compress_level=1)
    return Path(out.name)
