"""Fetch an image by URL on the server without letting the URL reach places it must not (SSRF).

The check happens on the address actually connected to, after DNS, on every redirect hop:

- ``_GuardedBackend`` is an ``httpcore`` network backend. Its ``connect_tcp`` resolves the host
  once (with an injectable resolver), refuses the host if ANY resolved address is not public
  (loopback, private, link-local incl. cloud metadata, CGNAT, multicast, reserved, and IPv6
  forms that embed such an IPv4 address) unless the ``UrlPolicy`` allows it, and then connects
  to one of the checked IP addresses, so a second DNS answer can never be used. The URL's host
  name stays the TLS server name and the ``Host`` header: httpcore takes both from the URL.
- ``FetchClient`` drives an ``httpcore.ConnectionPool`` on that backend and follows redirects
  itself, re-checking the scheme, credentials and host of every hop, at most ``max_redirects``.
- The body is streamed and the download stops as soon as it passes ``max_bytes``, whatever
  ``Content-Length`` says; ``timeout_s`` is a deadline for the whole fetch (every connect, read
  and write is given at most the time left), except DNS resolution (see ``resolve_host``).

Errors: ``UrlRefused`` (an ``InputError``) when the destination is not allowed; a plain
``InputError`` when the URL is malformed or the fetch fails. Messages name the URL (without any
credentials) and say what to do. They go back to whoever gave the URL, so they never repeat what
the server's DNS answered (an internal name's private address, the resolver's error): that goes
to this module's logger only.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpcore
import httpx

from labeler.core.exceptions import InputError
from serve.settings import DEFAULT_FETCH_TIMEOUT_S, DEFAULT_MAX_REDIRECTS

__all__ = [
    "DNS_LOOKUPS_AT_ONCE",
    "FetchClient",
    "FetchedUrl",
    "Resolver",
    "UrlPolicy",
    "UrlRefused",
    "fetch_url",
    "resolve_host",
]

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> IP address strings``; raises ``OSError`` when the host does not resolve."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWLIST_SETTING = "PROMPTLABEL_URL_ALLOWLIST"
_SUPPORTED_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = b"promptlabel-fetch/0.1"
_HOSTNAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
# WHATWG URL: a host whose last label is a number is an IPv4 address in some legacy form
# (2130706433, 0x7f.1, 0177.1, 127.1), which inet_aton-style resolvers also accept.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)

# Addresses a URL may not reach unless allow-listed, with the word the error message uses. The
# first match names the reason; anything not global (ipaddress.is_global) is refused too, so this
# table only has to be exact about what it names and about what Python's tables miss (multicast,
# 192.0.0.0/24, fec0::/10, ...), which differ between Python versions.
_REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in [
        ("0.0.0.0/8", "unspecified ('this network')"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.169.254/32", "link-local (cloud metadata)"),
        ("169.254.0.0/16", "link-local"),
        # Azure's WireServer / host agent: a public-looking address that only the VM reaches.
        ("168.63.129.16/32", "cloud platform (Azure WireServer)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "reserved (documentation)"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("198.51.100.0/24", "reserved (documentation)"),
        ("203.0.113.0/24", "reserved (documentation)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
        ("100::/64", "reserved (discard-only)"),
        ("2001::/23", "reserved (IETF protocol assignments)"),
        ("2001:db8::/32", "reserved (documentation)"),
        ("3fff::/20", "reserved (documentation)"),  # RFC 9637; global in Python 3.11
        ("5f00::/16", "reserved (segment routing SIDs)"),  # RFC 9602; global in Python 3.11
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# SIIT "IPv4-translated" addresses (RFC 2765, ::ffff:0:a.b.c.d), unlike ::ffff:a.b.c.d unknown
# to ipaddress; a translator in the path turns them into the IPv4 address.
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


class UrlRefused(InputError):
    """The URL's destination is not allowed (a non-public address, credentials in the URL).

    ``url`` is the URL as asked (credentials removed), ``address`` the refused IP address when
    there is one, ``reason`` a short word such as ``"loopback"``. ``address`` and ``reason`` are
    for the server's logs: when they come from DNS, the message (what the caller sees) omits them.
    """

    def __init__(self, message: str, *, url: str, address: str | None, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.address = address
        self.reason = reason


@dataclass(frozen=True)
class FetchedUrl:
    """A fetched body: ``url`` as asked, ``final_url`` after redirects."""

    url: str
    final_url: str
    content: bytes
    content_type: str | None


@dataclass(frozen=True)
class UrlPolicy:
    """Where fetched URLs may go.

    ``allow`` holds CIDR networks or single addresses (``"10.0.0.0/8"``, ``"::1"``) and exact
    host names (``"images.internal"``) that may be reached although they are not public; a host
    name allows whatever it resolves to, so allow a name only if its DNS is trusted.
    ``schemes`` is a subset of ``("http", "https")``. Raises ``InputError`` naming a bad item.
    """

    allow: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ("http", "https")
    allowed_networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    allowed_hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.schemes) - _SUPPORTED_SCHEMES)
        if unknown:
            raise InputError(f"URL schemes {unknown} cannot be fetched; use http and/or https")
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for item in self.allow:
            parsed = _parse_allow_item(item)
            if isinstance(parsed, str):
                hosts.add(parsed)
            else:
                networks.append(parsed)
        # Frozen dataclass: derived fields are set once, here.
        object.__setattr__(self, "allowed_networks", tuple(networks))
        object.__setattr__(self, "allowed_hosts", frozenset(hosts))

    @classmethod
    def from_strings(
        cls, items: Iterable[str], *, schemes: Iterable[str] = ("http", "https")
    ) -> Self:
        """Build a policy from settings strings (surrounding blanks are ignored)."""
        return cls(allow=tuple(item.strip() for item in items), schemes=tuple(schemes))

    def refusal_reason(self, address: str, *, host: str | None = None) -> str | None:
        """Why a connection to ``address`` (reached through URL host ``host``) is refused, or
        None when it is allowed: the address is public, or the allow-list covers it or the host.
        Raises ``ValueError`` if ``address`` is not an IP address."""
        if host is not None and _normalize_host(host) in self.allowed_hosts:
            return None
        ip = ipaddress.ip_address(address)
        embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        candidates = (ip,) if embedded is None else (ip, embedded)
        if any(
            candidate in network for candidate in candidates for network in self.allowed_networks
        ):
            return None
        return _non_public_reason(embedded or ip)


class FetchClient:
    """A connection pool that can only connect to addresses ``policy`` allows.

    Create one per process (or worker) and share it; it is thread-safe. ``resolver`` turns a
    host name into IP addresses (default ``resolve_host``); ``ssl_context`` verifies HTTPS
    servers (default: certifi's CAs); ``network_backend`` opens the sockets once an address is
    checked (default ``httpcore.SyncBackend()``). Environment proxies are never used: a proxy
    would resolve the name itself and defeat the check.
    """

    def __init__(
        self,
        *,
        policy: UrlPolicy,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore.NetworkBackend | None = None,
        max_connections: int = 10,
    ) -> None:
        self.policy = policy
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            network_backend=_GuardedBackend(
                policy=policy,
                resolver=resolver or resolve_host,
                inner=network_backend or httpcore.SyncBackend(),
            ),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()

    def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
    ) -> FetchedUrl:
        """GET ``url`` (following at most ``max_redirects`` redirects, each checked like the
        first URL) and return its body of at most ``max_bytes`` bytes, within ``timeout_s``
        seconds in all. Raises ``UrlRefused`` or ``InputError`` (see the module docstring)."""
        if max_bytes < 0 or timeout_s <= 0 or max_redirects < 0:
            raise ValueError(
                f"fetch: max_bytes={max_bytes}, timeout_s={timeout_s}, "
                f"max_redirects={max_redirects}; none may be negative, timeout_s must be > 0"
            )
        token = _DEADLINE.set(time.monotonic() + timeout_s)
        try:
            return self._fetch(
                url, max_bytes=max_bytes, timeout_s=timeout_s, max_redirects=max_redirects
            )
        except UrlRefused as refused:
            # A refusal can be an attack probing the network: worth a line in the logs, with the
            # address and its kind, which the message leaves out when DNS told them.
            logger.info(
                "URL fetch refused: %s [address %s, %s]", refused, refused.address, refused.reason
            )
            raise
        finally:
            _DEADLINE.reset(token)

    def _fetch(
        self, url: str, *, max_bytes: int, timeout_s: float, max_redirects: int
    ) -> FetchedUrl:
        shown = _for_message(url)
        current = self._checked_url(url, shown=shown, hop=None)
        for redirects in range(max_redirects + 1):
            hop = None if redirects == 0 else _for_message(str(current))
            try:
                outcome = self._get_once(
                    current, asked=url, max_bytes=max_bytes, shown=shown, hop=hop
                )
            except (_AddressRefused, _ResolveFailed) as refused:
                # One answer for a name that does not resolve and for one that resolves to an
                # address that is not public, without the address or its kind: anything more
                # would tell callers what the server's DNS knows, such as which internal names
                # exist. The log keeps the difference (and fetch() logs the address).
                address: str | None
                if isinstance(refused, _ResolveFailed):
                    logger.info(
                        "URL fetch of %s: cannot resolve host %r: %s",
                        shown,
                        refused.host,
                        refused.detail,
                    )
                    address, reason = None, "unresolvable"
                else:
                    address, reason = refused.address, refused.reason
                where = f"redirected to {hop}, whose host" if hop else "host"
                raise UrlRefused(
                    f"{shown}: refused: {where} {refused.host!r} does not resolve to a public "
                    "address; check the host name, or, if the service may reach it, add it (or "
                    f"the address the server log names) to {ALLOWLIST_SETTING}",
                    url=shown,
                    address=address,
                    reason=reason,
                ) from None
            except httpcore.TimeoutException:
                raise InputError(
                    f"{shown}: no complete answer within {timeout_s:g} s; check that the "
                    "server is up, or upload the image instead"
                ) from None
            except httpcore.ConnectError as error:
                port = current.port or (443 if current.scheme == "https" else 80)
                raise InputError(
                    f"{shown}: cannot connect to {current.host}:{port}"
                    + (f" (redirected to {hop})" if hop else "")
                    + f": {error or 'connection failed'}; check the host and port"
                ) from None
            except (httpcore.NetworkError, httpcore.ProtocolError) as error:
                raise InputError(
                    f"{shown}: the connection failed during the download ({error}); try again "
                    "later or upload the image instead"
                ) from None
            if isinstance(outcome, FetchedUrl):
                return outcome
            try:
                target = current.join(outcome)
            except httpx.InvalidURL as error:
                raise InputError(
                    f"{shown}: redirected to an invalid URL {outcome!r} ({error})"
                ) from None
            current = self._checked_url(str(target), shown=shown, hop=_for_message(str(target)))
        last = _for_message(str(current))
        raise InputError(
            f"{shown}: more than {max_redirects} redirects (the last to {last}); give the final "
            "URL of the image"
        )

    def _checked_url(self, url: str, *, shown: str, hop: str | None) -> httpx.URL:
        """Parse ``url`` and refuse, before any connection, what the URL alone shows is not
        allowed: another scheme, credentials, a malformed host, an IP literal (in any legacy
        form) that is not public."""
        subject = f"{shown}: redirected to {hop}, which" if hop else f"{shown}: the URL"
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise InputError(f"{subject} is not valid ({error}); check it") from None
        if parsed.scheme not in self.policy.schemes:
            allowed = " or ".join(f"{scheme}://" for scheme in self.policy.schemes)
            what = f"scheme {parsed.scheme!r}" if parsed.scheme else "no scheme"
            raise InputError(f"{subject} has {what}; only {allowed} URLs can be fetched")
        if parsed.userinfo:
            # Credentials would be stored with the job and logged, and "http://trusted@evil/"
            # is a classic way to make a URL look like it goes elsewhere; nothing needs them.
            raise UrlRefused(
                f"{subject} contains a user name or password; remove the 'user:password@' "
                "part (the fetcher never sends credentials)",
                url=shown,
                address=None,
                reason="credentials",
            )
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise InputError(f"{subject} has no host; check it")
        try:
            literal = _literal_address(host)
        except ValueError as error:
            raise InputError(f"{subject} has an invalid host ({error}); check it") from None
        if literal is None:
            return parsed
        reason = self.policy.refusal_reason(str(literal))
        if reason is not None:
            shown_host = host if host == str(literal) else f"{host} (= {literal})"
            raise UrlRefused(
                f"{subject} points to {shown_host}, a {reason} address; add it (or its "
                f"network) to {ALLOWLIST_SETTING} if the service may reach it",
                url=shown,
                address=str(literal),
                reason=reason,
            )
        return parsed

    def _get_once(
        self, url: httpx.URL, *, asked: str, max_bytes: int, shown: str, hop: str | None
    ) -> FetchedUrl | str:
        """One GET: the fetched body, or the ``Location`` of a redirect."""
        remaining_s = _clamp(None, httpcore.PoolTimeout)
        core_url = httpcore.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
        )
        headers = [
            (b"User-Agent", _USER_AGENT),
            (b"Accept", b"image/*, */*;q=0.5"),
            # We never decompress, so that max_bytes bounds what we hold in memory.
            (b"Accept-Encoding", b"identity"),
        ]
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), remaining_s)
        where = f" (redirected to {hop})" if hop else ""
        with self._pool.stream(
            "GET", core_url, headers=headers, extensions={"timeout": timeouts}
        ) as response:
            status = response.status
            if status in _REDIRECT_STATUSES:
                location = _header(response, b"location")
                if not location:
                    raise InputError(
                        f"{shown}{where}: the server answered HTTP {status} without a Location"
                    )
                return location
            if not 200 <= status < 300:
                reason_phrase = response.extensions.get("reason_phrase", b"")
                phrase = reason_phrase.decode("ascii", "replace") if reason_phrase else ""
                raise InputError(
                    f"{shown}{where}: the server answered HTTP {status} {phrase}".rstrip()
                    + "; check the URL"
                )
            encoding = (_header(response, b"content-encoding") or "identity").strip().lower()
            if encoding != "identity":
                raise InputError(
                    f"{shown}{where}: the server sent a {encoding!r}-encoded body although "
                    "none was asked; the fetcher does not decompress, upload the image instead"
                )
            declared = _header(response, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(shown, where, max_bytes, declared=int(declared))
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_stream():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(shown, where, max_bytes, declared=None)
                chunks.append(chunk)
            return FetchedUrl(
                url=asked,
                final_url=str(url),
                content=b"".join(chunks),
                content_type=_header(response, b"content-type"),
            )


def fetch_url(
    url: str,
    *,
    policy: UrlPolicy,
    max_bytes: int,
    timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    resolver: Resolver | None = None,
    client: FetchClient | None = None,
) -> FetchedUrl:
    """GET ``url`` safely: see ``FetchClient.fetch``. Pass a long-lived ``client`` (built with
    the same ``policy``) to reuse connections; without one, a client is made for this call.
    Raises ``ValueError`` when ``client`` was built with another policy or ``resolver`` is
    given with a ``client`` (the client's resolver is used)."""
    if client is None:
        with FetchClient(policy=policy, resolver=resolver) as own_client:
            return own_client.fetch(
                url, max_bytes=max_bytes, timeout_s=timeout_s, max_redirects=max_redirects
            )
    if client.policy != policy:
        raise ValueError("fetch_url: the client was built with another UrlPolicy")
    if resolver is not None:
        raise ValueError("fetch_url: pass the resolver to FetchClient, not with a client")
    return client.fetch(url, max_bytes=max_bytes, timeout_s=timeout_s, max_redirects=max_redirects)


def resolve_host(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to, via ``socket.getaddrinfo`` (blocking; a fetch
    waits for it only until its deadline, see ``FetchClient._resolve``)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# --- the network backend: resolve once, check every address, connect to a checked one ---

# The deadline of the fetch running in this thread (sync httpcore does all I/O in the calling
# thread); read by every connect/read/write so that timeout_s bounds the whole fetch.
_DEADLINE: ContextVar[float | None] = ContextVar("promptlabel_fetch_deadline", default=None)
DNS_LOOKUPS_AT_ONCE = 8
_LOOKUPS = concurrent.futures.ThreadPoolExecutor(
    max_workers=DNS_LOOKUPS_AT_ONCE, thread_name_prefix="dns"
)


class _AddressRefused(Exception):
    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} -> {address}: {reason}")
        self.host = host
        self.address = address
        self.reason = reason


class _ResolveFailed(Exception):
    def __init__(self, host: str, detail: str) -> None:
        super().__init__(host, detail)
        self.host = host
        self.detail = detail


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(
        self, *, policy: UrlPolicy, resolver: Resolver, inner: httpcore.NetworkBackend
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._resolve(host, port)
        # Every answer is checked, not only the one we connect to: otherwise a name answering
        # with one public and one private address could be steered to the private one.
        for address in addresses:
            reason = self._policy.refusal_reason(address, host=host)
            if reason is not None:
                raise _AddressRefused(host, address, reason)
        last_error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    timeout=_clamp(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as error:
                last_error = error
                continue
            return _DeadlineStream(stream)
        assert last_error is not None  # _resolve never returns an empty list
        raise last_error

    def _resolve(self, host: str, port: int) -> list[str]:
        try:
            literal = _literal_address(host)
        except ValueError as error:
            raise _ResolveFailed(host, str(error)) from None
        if literal is not None:
            return [str(literal)]
        # getaddrinfo has no timeout of its own: it runs in a lookup thread, and the fetch waits
        # for it only until its deadline (the lookup itself ends when the system resolver gives
        # up; the pool is small, so a flood of slow lookups waits in line, up to its deadlines).
        lookup = _LOOKUPS.submit(self._resolver, host, port)
        try:
            answers = lookup.result(timeout=_time_left())
        except concurrent.futures.TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host!r} took too long") from None
        except (OSError, UnicodeError) as error:  # UnicodeError: a label over 63 characters
            raise _ResolveFailed(host, str(error)) from None
        addresses: list[str] = []
        for answer in answers:
            try:
                addresses.append(str(ipaddress.ip_address(answer)))
            except ValueError:
                raise _ResolveFailed(host, f"the resolver answered {answer!r}") from None
        if not addresses:
            raise _ResolveFailed(host, "no address")
        return addresses

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("Unix sockets are never used to fetch URLs")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """Gives every read and write at most the time left before the fetch deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout=_clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout=_clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(
            ssl_context,
            server_hostname=server_hostname,
            timeout=_clamp(timeout, httpcore.ConnectTimeout),
        )
        return _DeadlineStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _time_left() -> float | None:
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def _clamp(timeout: float | None, error: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` cut to the time left before the deadline; raises ``error`` when none is."""
    left = _time_left()
    if left is None:
        return timeout
    if left <= 0:
        raise error("the fetch deadline has passed")
    return left if timeout is None else min(timeout, left)


# --- addresses and hosts ---


def _non_public_reason(ip: IPAddress) -> str | None:
    for network, reason in _REFUSED_NETWORKS:
        if ip in network:
            return reason
    if ip.is_multicast:
        return "multicast"
    # IPv6 space IANA has not given out for unicast (outside 2000::/3), which Python 3.11
    # still calls global; new special blocks (5f00::/16 was one) tend to be carved from it.
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-public"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64, SIIT
    translated), if any; connecting to such an address may reach that IPv4 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    value = int(ip)
    # NAT64, SIIT translated (::ffff:0:a.b.c.d), IPv4-compatible (::a.b.c.d)
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or (value >> 32 == 0 and value > 1):
        return ipaddress.IPv4Address(value & 0xFFFF_FFFF)
    return None


def _literal_address(host: str) -> IPAddress | None:
    """The IP address ``host`` spells (in standard or legacy IPv4 form), or None for a host
    name. Raises ``ValueError`` for a host that is neither (e.g. ``1.2.3.4.5``, ``a b``)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    name = host.rstrip(".")
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        return _legacy_ipv4(labels)
    if not _HOSTNAME.match(host.lower()):
        raise ValueError(f"{host!r} is not a host name")
    return None


def _legacy_ipv4(labels: list[str]) -> ipaddress.IPv4Address:
    """Parse WHATWG's IPv4 forms: 1 to 4 numbers (decimal, 0x hex, 0-prefixed octal), the last
    filling the remaining bytes, e.g. ``2130706433``, ``0x7f.1``, ``127.0.1``."""
    spelled = ".".join(labels)
    if len(labels) > 4:
        raise ValueError(f"{spelled!r} is neither an IPv4 address nor a host name")
    numbers: list[int] = []
    for label in labels:
        if not _NUMERIC_LABEL.match(label):
            raise ValueError(f"{spelled!r} is neither an IPv4 address nor a host name")
        if label[:2].lower() == "0x":
            numbers.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            try:
                numbers.append(int(label, 8))
            except ValueError:
                raise ValueError(f"{spelled!r} is not a valid IPv4 address") from None
        else:
            numbers.append(int(label))
    last_limit = 256 ** (5 - len(numbers))
    if any(not 0 <= number < 256 for number in numbers[:-1]) or not 0 <= numbers[-1] < last_limit:
        raise ValueError(f"{spelled!r} is not a valid IPv4 address")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _normalize_host(host: str) -> str:
    return host.lower().rstrip(".")


def _parse_allow_item(item: str) -> IPNetwork | str:
    """An allow-list item as a network, or as a normalized host name; raises ``InputError``."""
    where = f"{ALLOWLIST_SETTING} item {item!r}"
    if not item:
        raise InputError(f"{where}: empty; give a CIDR network, an IP address or a host name")
    if "/" in item or ":" in item or item.replace(".", "").isdigit():
        try:
            return ipaddress.ip_network(item)
        except ValueError as error:
            hint = ""
            if "host bits set" in str(error):
                hint = f"; did you mean {ipaddress.ip_network(item, strict=False)}?"
            raise InputError(f"{where}: not a CIDR network or IP address ({error}){hint}") from None
    try:
        parsed = httpx.URL(f"http://{item}/")
    except httpx.InvalidURL as error:
        raise InputError(f"{where}: not a host name ({error})") from None
    host = parsed.raw_host.decode("ascii")
    try:
        literal = _literal_address(host)
    except ValueError as error:
        raise InputError(f"{where}: not a host name ({error})") from None
    if literal is not None:
        raise InputError(f"{where}: an IP address in a legacy form; write it as {literal}")
    if parsed.userinfo or parsed.port is not None or parsed.raw_path != b"/":
        raise InputError(f"{where}: give the host name alone (no scheme, port or path)")
    return _normalize_host(host)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _too_large(shown: str, where: str, max_bytes: int, *, declared: int | None) -> InputError:
    size = f"{declared} bytes" if declared is not None else f"more than {max_bytes} bytes"
    return InputError(
        f"{shown}{where}: the body is {size}; the limit is {max_bytes} bytes, send a smaller image"
    )


def _for_message(url: str, *, limit: int = 300) -> str:
    """``url`` without credentials, shortened, for error messages and logs."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is not None and parsed.userinfo:
        url = str(parsed.copy_with(username=None, password=None))
    return url if len(url) <= limit else url[: limit - 1] + "…"
