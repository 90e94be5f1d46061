"""serve.ingest.fetch against a real HTTP(S) server on 127.0.0.1; DNS is a fake resolver, so nothing
leaves the machine. A spy network backend records every connection the fetcher opens, which
is how the tests prove that a refused destination is refused before any connection."""

from __future__ import annotations

import gzip
import ipaddress
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import pytest

from labeler.core.exceptions import InputError
from serve.ingest.fetch import FetchClient, UrlPolicy, UrlRefused, fetch_url, resolve_host

LOOPBACK = UrlPolicy(allow=("127.0.0.1/32",))
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# --- the loopback server ---


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read ``server.requests`` instead."""

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Host")))
        route = ROUTES.get(self.path.partition("?")[0])
        if route is None:
            self.send_error(404)
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher hung up on purpose (too large, deadline)

    def reply(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    @property
    def size(self) -> int:
        return int(self.path.partition("?n=")[2] or 0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str | None]] = []
        self.stop = threading.Event()
        self.scheme = "http"
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: aborted connections are part of the tests."""


def _redirect(location: str) -> Callable[[_Handler], None]:
    def route(handler: _Handler) -> None:
        target = location.replace("{port}", str(handler.server.port))
        handler.reply(302, b"", [("Location", target)])

    return route


def _no_length(handler: _Handler) -> None:
    # HTTP/1.0 without Content-Length: the body runs until the server closes.
    handler.reply(200, b"x" * handler.size, [("Content-Type", "image/png")])


def _chunked(handler: _Handler) -> None:
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Connection", "close")
    handler.end_headers()
    remaining = handler.size
    while remaining > 0:
        chunk = b"y" * min(remaining, 300)
        handler.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        remaining -= len(chunk)
    handler.wfile.write(b"0\r\n\r\n")


def _hang(handler: _Handler) -> None:
    handler.server.stop.wait(10)


def _drip(handler: _Handler) -> None:
    # A byte every 50 ms: no single read ever times out, only a deadline for the whole
    # fetch stops it.
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**6))
    handler.end_headers()
    for _ in range(200):  # 10 s at most, so a fetcher without a deadline fails, not hangs
        if handler.server.stop.wait(0.05):
            return
        handler.wfile.write(b"z")
        handler.wfile.flush()


ROUTES: dict[str, Callable[[_Handler], None]] = {
    "/img": lambda h: h.reply(
        200, PNG, [("Content-Type", "image/png"), ("Content-Length", str(len(PNG)))]
    ),
    "/missing": lambda h: h.send_error(404),
    "/redirect-img": _redirect("/img"),
    "/redirect-absolute": _redirect("http://127.0.0.1:{port}/redirect-img"),
    "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
    "/to-internal": _redirect("http://internal.example/img"),
    "/to-ftp": _redirect("ftp://127.0.0.1/img"),
    "/to-credentials": _redirect("http://user:secret@127.0.0.1:{port}/img"),
    "/loop": _redirect("/loop"),
    "/no-length": _no_length,
    "/chunked": _chunked,
    "/lying-length": lambda h: h.reply(200, b"w" * 5000, [("Content-Length", "10")]),
    "/big-declared": lambda h: h.reply(200, b"v" * 100, [("Content-Length", str(10**9))]),
    "/gzip": lambda h: h.reply(200, gzip.compress(bytes(10**6)), [("Content-Encoding", "gzip")]),
    "/hang": _hang,
    "/drip": _drip,
}


def _serve(server: _Server) -> Iterator[_Server]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def _module_server() -> Iterator[_Server]:
    yield from _serve(_Server())


@pytest.fixture
def server(_module_server: _Server) -> _Server:
    _module_server.requests.clear()
    return _module_server


# --- spies ---


class SpyResolver:
    """A fake DNS: ``answers`` maps host names to addresses; records every question."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.answers[host])


class SpyBackend(httpcore.NetworkBackend):
    """The real socket backend, recording where it is asked to connect."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.connects: list[tuple[str, int]] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)


class Spied:
    """A FetchClient with a spy resolver and a spy backend."""

    def __init__(
        self,
        policy: UrlPolicy,
        answers: dict[str, list[str]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.resolver = SpyResolver(answers)
        self.backend = SpyBackend()
        self.client = FetchClient(
            policy=policy,
            resolver=self.resolver,
            network_backend=self.backend,
            ssl_context=ssl_context,
        )

    def fetch(self, url: str, **options: Any) -> Any:
        options.setdefault("max_bytes", 100_000)
        options.setdefault("timeout_s", 5.0)
        return self.client.fetch(url, **options)


@pytest.fixture
def spied() -> Iterator[Callable[..., Spied]]:
    made: list[Spied] = []

    def make(policy: UrlPolicy = LOOPBACK, **options: Any) -> Spied:
        made.append(Spied(policy, **options))
        return made[-1]

    yield make
    for each in made:
        each.client.close()


# --- success ---


def test_fetches_from_an_allowlisted_loopback_server(server: _Server) -> None:
    url = server.url("/img")
    fetched = fetch_url(url, policy=LOOPBACK, max_bytes=len(PNG), timeout_s=5.0)
    assert fetched.content == PNG
    assert fetched.content_type == "image/png"
    assert fetched.url == url
    assert fetched.final_url == url


def test_connects_to_the_checked_address_but_keeps_the_host_name(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    spy = spied(UrlPolicy(allow=("Images.Internal.",)), answers={"images.internal": ["127.0.0.1"]})
    fetched = spy.fetch(server.url("/img", host="images.internal"))
    assert fetched.content == PNG
    assert spy.resolver.calls == [("images.internal", server.port)]
    assert spy.backend.connects == [("127.0.0.1", server.port)]
    assert server.requests == [("/img", f"images.internal:{server.port}")]


def test_a_shared_client_serves_several_fetches(server: _Server) -> None:
    with FetchClient(policy=LOOPBACK) as client:
        for _ in range(3):
            fetched = fetch_url(server.url("/img"), policy=LOOPBACK, max_bytes=10**6, client=client)
            assert fetched.content == PNG
        # A refusal leaves the pool usable.
        with pytest.raises(UrlRefused):
            fetch_url("http://10.0.0.1/", policy=LOOPBACK, max_bytes=10**6, client=client)
        assert fetch_url(server.url("/img"), policy=LOOPBACK, max_bytes=10**6, client=client)
        with pytest.raises(ValueError, match="another UrlPolicy"):
            fetch_url(server.url("/img"), policy=UrlPolicy(), max_bytes=10**6, client=client)
        with pytest.raises(ValueError, match="resolver"):
            fetch_url(
                server.url("/img"),
                policy=LOOPBACK,
                max_bytes=10**6,
                client=client,
                resolver=SpyResolver(),
            )


def test_resolve_host_answers_ip_strings_for_a_literal() -> None:
    assert resolve_host("127.0.0.1", 80) == ["127.0.0.1"]


# --- refused destinations ---


def test_loopback_is_refused_without_allowlist(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    spy = spied(UrlPolicy())
    with pytest.raises(UrlRefused) as caught:
        spy.fetch(server.url("/img"))
    assert caught.value.reason == "loopback"
    assert caught.value.address == "127.0.0.1"
    assert "PROMPTLABEL_URL_ALLOWLIST" in str(caught.value)
    assert spy.resolver.calls == []
    assert spy.backend.connects == []
    assert server.requests == []


def test_host_name_resolving_to_loopback_is_refused_after_dns(
    server: _Server, spied: Callable[..., Spied], caplog: pytest.LogCaptureFixture
) -> None:
    spy = spied(UrlPolicy(), answers={"public.example": ["127.0.0.1"]})
    with (
        caplog.at_level(logging.INFO, logger="serve.ingest.fetch"),
        pytest.raises(UrlRefused) as caught,
    ):
        spy.fetch(server.url("/img", host="public.example"))
    # The caller learns that the host is refused, not what the server's DNS says about it; the
    # server log keeps the address and its kind.
    message = str(caught.value)
    assert "'public.example' does not resolve to a public address" in message
    assert "PROMPTLABEL_URL_ALLOWLIST" in message
    assert "127.0.0.1" not in message
    assert "loopback" not in message
    assert (caught.value.address, caught.value.reason) == ("127.0.0.1", "loopback")
    assert "127.0.0.1" in caplog.text
    assert "loopback" in caplog.text
    assert spy.resolver.calls == [("public.example", server.port)]
    assert spy.backend.connects == []
    assert server.requests == []


def test_one_private_answer_among_public_ones_refuses_the_host(
    spied: Callable[..., Spied],
) -> None:
    spy = spied(UrlPolicy(), answers={"mixed.example": ["93.184.216.34", "10.0.0.1"]})
    with pytest.raises(UrlRefused, match="does not resolve to a public address") as caught:
        spy.fetch("http://mixed.example/cat.png")
    assert (caught.value.address, caught.value.reason) == ("10.0.0.1", "private")
    assert "10.0.0.1" not in str(caught.value)
    assert spy.backend.connects == []


REFUSED_ADDRESSES = [
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("169.254.1.1", "link-local"),
    ("168.63.129.16", "cloud platform (Azure WireServer)"),
    ("100.64.0.1", "shared (carrier-grade NAT)"),
    ("127.0.0.2", "loopback"),
    ("0.0.0.0", "unspecified ('this network')"),
    ("224.0.0.1", "multicast"),
    ("255.255.255.255", "reserved"),
    ("198.18.0.1", "reserved (benchmarking)"),
    ("192.0.0.8", "reserved (IETF protocol assignments)"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private (unique local)"),
    ("fd12:3456::1", "private (unique local)"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("3fff::1", "reserved (documentation)"),
    ("5f00::1", "reserved (segment routing SIDs)"),
    ("4000::1", "reserved"),  # not yet given out for unicast
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:a9fe:a9fe", "link-local (cloud metadata)"),
    ("::7f00:1", "loopback"),  # IPv4-compatible
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("2002:a9fe:a9fe::1", "link-local (cloud metadata)"),  # 6to4 of 169.254.169.254
    ("::ffff:0:a9fe:a9fe", "link-local (cloud metadata)"),  # SIIT translated
    ("::ffff:0:7f00:1", "loopback"),  # SIIT translated
    ("64:ff9b::a83f:8110", "cloud platform (Azure WireServer)"),  # NAT64 of 168.63.129.16
]


def _in_url(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@pytest.mark.parametrize(("address", "reason"), REFUSED_ADDRESSES)
def test_non_public_address_literal_is_refused_before_connecting(
    spied: Callable[..., Spied], address: str, reason: str
) -> None:
    spy = spied(UrlPolicy())
    with pytest.raises(UrlRefused) as caught:
        spy.fetch(f"http://{_in_url(address)}:8080/cat.png")
    assert caught.value.reason == reason
    assert f"a {reason} address" in str(caught.value)
    assert spy.resolver.calls == []
    assert spy.backend.connects == []


@pytest.mark.parametrize(("address", "reason"), REFUSED_ADDRESSES)
def test_host_name_resolving_to_non_public_address_is_refused_before_connecting(
    spied: Callable[..., Spied], address: str, reason: str
) -> None:
    spy = spied(UrlPolicy(), answers={"cdn.example": [address]})
    with pytest.raises(UrlRefused) as caught:
        spy.fetch("http://cdn.example/cat.png")
    assert caught.value.reason == reason
    resolved = str(ipaddress.ip_address(address))  # as the fetcher spells it
    assert caught.value.address == resolved
    assert "does not resolve to a public address" in str(caught.value)
    assert f"{resolved}," not in str(caught.value)
    assert f"a {reason} address" not in str(caught.value)
    assert spy.resolver.calls == [("cdn.example", 80)]
    assert spy.backend.connects == []


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.1", "0X7F.0.0.1", "127.1", "0x7f000001", "017700000001", "127.0.1"],
)
def test_legacy_ipv4_spellings_of_loopback_are_refused(
    spied: Callable[..., Spied], host: str
) -> None:
    spy = spied(UrlPolicy())
    with pytest.raises(UrlRefused) as caught:
        spy.fetch(f"http://{host}/")
    assert caught.value.address == "127.0.0.1"
    assert caught.value.reason == "loopback"
    assert spy.resolver.calls == []
    assert spy.backend.connects == []


def test_legacy_ipv4_spelling_connects_to_the_address_it_spells(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    spy = spied(LOOPBACK)
    fetched = spy.fetch(server.url("/img", host="2130706433"))
    assert fetched.content == PNG
    assert spy.resolver.calls == []
    assert spy.backend.connects == [("127.0.0.1", server.port)]


def test_credentials_in_the_url_are_refused_and_not_repeated(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    spy = spied(LOOPBACK)
    with pytest.raises(UrlRefused) as caught:
        spy.fetch(server.url("/img", host="user:secret@127.0.0.1"))
    assert caught.value.reason == "credentials"
    assert "secret" not in str(caught.value)
    assert spy.backend.connects == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/cat.png",
        "gopher://127.0.0.1:70/_GET",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "cdn.example/cat.png",
    ],
)
def test_other_schemes_are_refused(spied: Callable[..., Spied], url: str) -> None:
    spy = spied(LOOPBACK, answers={"cdn.example": ["93.184.216.34"]})
    with pytest.raises(InputError, match=r"only http:// or https:// URLs") as caught:
        spy.fetch(url)
    assert not isinstance(caught.value, UrlRefused)
    assert spy.resolver.calls == []
    assert spy.backend.connects == []


def test_policy_can_restrict_to_https(spied: Callable[..., Spied]) -> None:
    spy = spied(UrlPolicy(schemes=("https",)), answers={"cdn.example": ["93.184.216.34"]})
    with pytest.raises(InputError, match=r"scheme 'http'; only https:// URLs"):
        spy.fetch("http://cdn.example/cat.png")
    assert spy.backend.connects == []


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "http://",
        "http:///cat.png",
        "http://exa mple.com/cat.png",
        "http://[::1/",
        "http://1.2.3.4.5/",
        "http://cdn.123/",
        "http://0177.0.0.1/",  # httpx refuses a dotted quad with a leading zero
        "http://08.1/",
        "http://256.1/",
        "http://1.16777216/",
    ],
)
def test_malformed_urls_are_refused_before_connecting(
    spied: Callable[..., Spied], url: str
) -> None:
    spy = spied(UrlPolicy())
    with pytest.raises(InputError) as caught:
        spy.fetch(url)
    assert not isinstance(caught.value, UrlRefused)
    assert spy.resolver.calls == []
    assert spy.backend.connects == []


# --- redirects ---


@pytest.mark.parametrize("path", ["/redirect-img", "/redirect-absolute"])
def test_follows_redirects_to_allowed_destinations(
    server: _Server, spied: Callable[..., Spied], path: str
) -> None:
    fetched = spied(LOOPBACK).fetch(server.url(path))
    assert fetched.content == PNG
    assert fetched.url == server.url(path)
    assert fetched.final_url == server.url("/img")


def test_redirect_to_cloud_metadata_is_refused(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    spy = spied(LOOPBACK)
    with pytest.raises(UrlRefused) as caught:
        spy.fetch(server.url("/to-metadata"))
    assert caught.value.address == "169.254.169.254"
    assert "redirected to http://169.254.169.254/latest/meta-data/" in str(caught.value)
    assert spy.backend.connects == [("127.0.0.1", server.port)]


def test_redirect_to_a_name_resolving_to_a_private_address_is_refused(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    spy = spied(LOOPBACK, answers={"internal.example": ["10.0.0.1"]})
    with pytest.raises(UrlRefused) as caught:
        spy.fetch(server.url("/to-internal"))
    assert caught.value.address == "10.0.0.1"
    assert "redirected to http://internal.example/img" in str(caught.value)
    assert spy.resolver.calls == [("internal.example", 80)]
    assert spy.backend.connects == [("127.0.0.1", server.port)]


def test_redirect_to_another_scheme_is_refused(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    with pytest.raises(InputError, match=r"redirected to ftp://127\.0\.0\.1/img, which has"):
        spied(LOOPBACK).fetch(server.url("/to-ftp"))


def test_redirect_to_a_url_with_credentials_is_refused(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    with pytest.raises(UrlRefused) as caught:
        spied(LOOPBACK).fetch(server.url("/to-credentials"))
    assert "secret" not in str(caught.value)


def test_redirect_loop_stops_after_max_redirects(
    server: _Server, spied: Callable[..., Spied]
) -> None:
    with pytest.raises(InputError, match="more than 2 redirects"):
        spied(LOOPBACK).fetch(server.url("/loop"), max_redirects=2)
    assert [path for path, _ in server.requests] == ["/loop"] * 3


# --- what comes back ---


@pytest.mark.parametrize("path", ["/no-length", "/chunked"])
def test_body_up_to_max_bytes_is_kept(server: _Server, path: str) -> None:
    fetched = fetch_url(server.url(f"{path}?n=1000"), policy=LOOPBACK, max_bytes=1000)
    assert len(fetched.content) == 1000


@pytest.mark.parametrize("path", ["/no-length", "/chunked"])
def test_body_over_max_bytes_is_refused_without_content_length(server: _Server, path: str) -> None:
    with pytest.raises(InputError, match="more than 1000 bytes; the limit is 1000 bytes"):
        fetch_url(server.url(f"{path}?n=200000"), policy=LOOPBACK, max_bytes=1000)


def test_declared_length_over_max_bytes_is_refused_before_reading(server: _Server) -> None:
    with pytest.raises(InputError, match="the body is 1000000000 bytes; the limit is 1000"):
        fetch_url(server.url("/big-declared"), policy=LOOPBACK, max_bytes=1000)


def test_a_short_content_length_never_lets_more_bytes_in(server: _Server) -> None:
    # The server sends 5000 bytes after "Content-Length: 10": the rest is not a body.
    fetched = fetch_url(server.url("/lying-length"), policy=LOOPBACK, max_bytes=1000)
    assert fetched.content == b"w" * 10


def test_compressed_body_is_refused_not_inflated(server: _Server) -> None:
    with pytest.raises(InputError, match="'gzip'-encoded body"):
        fetch_url(server.url("/gzip"), policy=LOOPBACK, max_bytes=10**7)


def test_http_error_status_is_reported(server: _Server) -> None:
    with pytest.raises(InputError, match=r"answered HTTP 404 Not Found; check the URL") as caught:
        fetch_url(server.url("/missing"), policy=LOOPBACK, max_bytes=1000)
    assert not isinstance(caught.value, UrlRefused)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", ["/hang", "/drip"])
def test_timeout_is_a_deadline_for_the_whole_fetch(server: _Server, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match=r"no complete answer within 0\.5 s"):
        fetch_url(server.url(path), policy=LOOPBACK, max_bytes=10**7, timeout_s=0.5)
    elapsed_s = time.monotonic() - started
    assert 0.4 < elapsed_s < 1.5


def test_connection_refused_is_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError, match=rf"cannot connect to 127\.0\.0\.1:{port}"):
        fetch_url(f"http://127.0.0.1:{port}/img", policy=LOOPBACK, max_bytes=1000)


def test_an_unknown_host_gets_the_answer_an_internal_one_gets(
    spied: Callable[..., Spied], caplog: pytest.LogCaptureFixture
) -> None:
    spy = spied(UrlPolicy(), answers={"internal.example": ["10.1.2.3"]})
    with (
        caplog.at_level(logging.INFO, logger="serve.ingest.fetch"),
        pytest.raises(UrlRefused) as unknown,
    ):
        spy.fetch("http://nowhere.example/cat.png")
    with pytest.raises(UrlRefused) as internal:
        spy.fetch("http://internal.example/cat.png")
    # Otherwise callers could ask the server's DNS which internal names exist.
    assert str(unknown.value).replace("nowhere", "internal") == str(internal.value)
    assert "check the host name" in str(unknown.value)
    assert (unknown.value.address, unknown.value.reason) == (None, "unresolvable")
    # The resolver's own error is for the server log only.
    assert "Name or service not known" not in str(unknown.value)
    assert "Name or service not known" in caplog.text


def test_a_host_label_over_63_characters_is_refused_not_a_crash() -> None:
    # The system resolver's IDNA step raises UnicodeError (a ValueError), not OSError; a
    # redirect to such a host takes the same path.
    with pytest.raises(UrlRefused) as caught:
        fetch_url(f"http://{'a' * 70}.example/cat.png", policy=UrlPolicy(), max_bytes=1000)
    assert caught.value.reason == "unresolvable"


def test_a_slow_dns_lookup_ends_at_the_fetch_deadline() -> None:
    release = threading.Event()

    def stuck_resolver(host: str, port: int) -> list[str]:
        release.wait(10)  # a resolver that does not answer (getaddrinfo has no timeout)
        return ["127.0.0.1"]

    with FetchClient(policy=LOOPBACK, resolver=stuck_resolver) as client:
        started = time.monotonic()
        with pytest.raises(InputError, match=r"no complete answer within 0\.5 s"):
            client.fetch("http://slow-dns.example/cat.png", max_bytes=1000, timeout_s=0.5)
        assert time.monotonic() - started < 2.0
    release.set()


# --- HTTPS: the certificate is checked against the URL's host name, not the address ---


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=images.test", "-addext", "subjectAltName=DNS:images.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tls_files: tuple[Path, Path]) -> Iterator[tuple[_Server, list[str | None]]]:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server_names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    for server in _serve(_Server(context)):
        yield server, server_names


def test_https_uses_the_host_name_for_sni_and_certificate(
    tls_files: tuple[Path, Path],
    tls_server: tuple[_Server, list[str | None]],
    spied: Callable[..., Spied],
) -> None:
    server, server_names = tls_server
    trust = ssl.create_default_context(cafile=str(tls_files[0]))
    spy = spied(LOOPBACK, answers={"images.test": ["127.0.0.1"]}, ssl_context=trust)
    fetched = spy.fetch(server.url("/img", host="images.test"))
    assert fetched.content == PNG
    assert server_names[-1] == "images.test"
    assert spy.backend.connects == [("127.0.0.1", server.port)]
    # The same server by address: the certificate does not name 127.0.0.1, so it is refused.
    with pytest.raises(InputError, match="cannot connect"):
        spy.fetch(server.url("/img"))


# --- the policy ---


def test_policy_from_strings_parses_networks_and_host_names() -> None:
    policy = UrlPolicy.from_strings(["127.0.0.1/32", " Images.Internal. ", "::1", "10.0.0.0/8"])
    assert policy.allowed_hosts == frozenset({"images.internal"})
    assert policy.refusal_reason("10.2.3.4") is None
    assert policy.refusal_reason("::ffff:10.2.3.4") is None  # the mapped form of an allowed one
    assert policy.refusal_reason("::1") is None
    assert policy.refusal_reason("192.168.0.1") == "private"
    assert policy.refusal_reason("192.168.0.1", host="images.internal.") is None
    assert policy.refusal_reason("192.168.0.1", host="other.internal") == "private"
    assert policy.refusal_reason("93.184.216.34") is None
    assert policy.refusal_reason("2606:4700::1") is None
    assert policy.refusal_reason("64:ff9b::808:808") is None  # NAT64 of a public address
    assert policy.refusal_reason("::ffff:0:808:808") is None  # SIIT form of a public address
    assert policy.refusal_reason("::ffff:0:a02:304") is None  # SIIT form of an allowed one


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("", "empty"),
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "not a CIDR network"),
        ("999.1.1.1", "not a CIDR network"),
        ("fe80::/200", "not a CIDR network"),
        ("http://images.internal", "not a CIDR network"),
        ("images.internal/cats", "not a CIDR network"),
        ("images.internal:8080", "not a CIDR network"),
        ("user@images.internal", "host name alone"),
        ("a b", "not a host name"),
        ("0x7f.1", "write it as 127.0.0.1"),
    ],
)
def test_policy_from_strings_names_a_bad_item(item: str, message: str) -> None:
    with pytest.raises(InputError, match="PROMPTLABEL_URL_ALLOWLIST item") as caught:
        UrlPolicy.from_strings(["127.0.0.1/32", item])
    assert repr(item) in str(caught.value)
    assert message in str(caught.value)


def test_policy_refuses_schemes_it_cannot_fetch() -> None:
    with pytest.raises(InputError, match="cannot be fetched"):
        UrlPolicy(schemes=("http", "ftp"))
