"""Session cookies and CSRF tokens: what a forged, altered or expired value gets."""

from __future__ import annotations

import stat
from pathlib import Path

from serve.api.sessions import (
    SESSION_TTL_S,
    csrf_token,
    is_valid_csrf,
    key_id_of_session,
    load_session_secret,
    new_session,
)

SECRET = b"s" * 64


def test_a_session_names_its_key_until_it_expires() -> None:
    cookie = new_session("key123", SECRET, now=1000.0)
    assert key_id_of_session(cookie, SECRET, now=1000.0) == "key123"
    assert key_id_of_session(cookie, SECRET, now=1000.0 + SESSION_TTL_S) == "key123"
    assert key_id_of_session(cookie, SECRET, now=1001.0 + SESSION_TTL_S) is None


def test_an_altered_or_foreign_session_is_refused() -> None:
    cookie = new_session("key123", SECRET, now=1000.0)
    key_id, expires, signature = cookie.split(".")
    assert key_id_of_session(f"other.{expires}.{signature}", SECRET, now=1000.0) is None
    assert key_id_of_session(f"{key_id}.{int(expires) + 9}.{signature}", SECRET, now=1000.0) is None
    assert key_id_of_session(cookie, b"another secret", now=1000.0) is None
    for garbage in ("", "a.b", "a.b.c.d", "key.notanumber.sig"):
        assert key_id_of_session(garbage, SECRET, now=1000.0) is None


def test_the_csrf_token_belongs_to_one_session() -> None:
    first = new_session("key123", SECRET, now=1000.0)
    second = new_session("key123", SECRET, now=2000.0)
    token = csrf_token(first, SECRET)
    assert is_valid_csrf(first, token, SECRET)
    assert not is_valid_csrf(second, token, SECRET)
    assert not is_valid_csrf(first, None, SECRET)
    assert not is_valid_csrf(first, token, b"another secret")


def test_the_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    assert load_session_secret(tmp_path, "configured") == b"configured"
    made = load_session_secret(tmp_path / "data", None)
    assert len(made) == 64 and load_session_secret(tmp_path / "data", None) == made
    mode = stat.S_IMODE((tmp_path / "data" / "session-secret").stat().st_mode)
    assert mode == 0o600
    assert list((tmp_path / "data").iterdir()) == [tmp_path / "data" / "session-secret"]
