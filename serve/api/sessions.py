"""Browser sessions for the pages: an API key is exchanged once for a signed cookie.

The cookie (``pl_session``) holds the key's id and an expiry, signed with HMAC-SHA256; it is
HttpOnly (scripts cannot read it), SameSite=Strict (other sites' requests do not carry it) and
Secure behind HTTPS. Every state change made with it must also carry ``X-CSRF-Token``, a second
HMAC of the cookie that the page reads from ``GET /review/session``. The key is looked up on every
request, so revoking it ends its sessions at once. The signing secret is
``PROMPTLABEL_SESSION_SECRET`` or, when unset, a random one kept in the data folder, so that every
process of one service shares it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "csrf_token",
    "is_valid_csrf",
    "key_id_of_session",
    "load_session_secret",
    "new_session",
]

SESSION_COOKIE = "pl_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600  # a working day; then sign in again
_SECRET_FILE = "session-secret"


def load_session_secret(data_dir: Path, configured: str | None) -> bytes:
    """The configured secret, else the data folder's (made once, readable by its owner only)."""
    if configured:
        return configured.encode()
    path = data_dir / _SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_hex(32).encode()
    partial = path.with_name(f".{_SECRET_FILE}.{os.getpid()}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(fresh)
    try:
        # Two processes starting at once: the first link wins and both read the winner's.
        os.link(partial, path)
    except FileExistsError:
        pass
    finally:
        partial.unlink(missing_ok=True)
    return path.read_bytes()


def _sign(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def new_session(key_id: str, secret: bytes, *, now: float | None = None) -> str:
    """A cookie value for ``key_id``, valid for ``SESSION_TTL_S``."""
    expires = int((time.time() if now is None else now) + SESSION_TTL_S)
    body = f"{key_id}.{expires}"
    return f"{body}.{_sign(secret, 'session:' + body)}"


def key_id_of_session(value: str, secret: bytes, *, now: float | None = None) -> str | None:
    """The key id a cookie value stands for; None when forged, malformed or expired."""
    parts = value.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    key_id, expires, signature = parts
    if not hmac.compare_digest(signature, _sign(secret, f"session:{key_id}.{expires}")):
        return None
    if int(expires) < (time.time() if now is None else now):
        return None
    return key_id


def csrf_token(session_value: str, secret: bytes) -> str:
    """The token a page sends with every state change it makes with this session."""
    return _sign(secret, "csrf:" + session_value)


def is_valid_csrf(session_value: str, token: str | None, secret: bytes) -> bool:
    return token is not None and hmac.compare_digest(token, csrf_token(session_value, secret))
