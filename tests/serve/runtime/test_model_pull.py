"""The device's verified model copy (serve.runtime.model_pull) against a real loopback HTTP server
(the standard library's): downloads, conditional GETs, refresh intervals, corrupt downloads and
a server that is down."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from labeler.core.exceptions import InputError
from serve.runtime.model_pull import ModelPullError, PulledModel, pull_model
from tests.fakes.model_server import ModelServer

MODEL_A = b"onnx model A " * 1000
MODEL_B = b"onnx model B " * 1200
REFRESH_S = 600.0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[ModelServer]:
    running = ModelServer(MODEL_A)
    yield running
    running.stop()


def _pull(server: ModelServer, cache: Path, now: float, api_key: str | None = None) -> PulledModel:
    return pull_model(
        server.url, cache, refresh_s=REFRESH_S, api_key=api_key, clock=lambda: now, timeout_s=5.0
    )


def test_the_first_pull_downloads_a_verified_copy(server: ModelServer, tmp_path: Path) -> None:
    pulled = _pull(server, tmp_path, 1000.0, api_key="secret-key")

    assert pulled.how == "downloaded"
    assert pulled.path.read_bytes() == MODEL_A
    assert pulled.sha256 == _sha256(MODEL_A)
    assert pulled.version == "v1"
    assert pulled.warning is None
    [request] = server.served.requests
    assert request["Authorization"] == "Bearer secret-key"
    assert "If-None-Match" not in request
    state = json.loads((pulled.path.parent / "state.json").read_text())
    assert state["sha256"] == _sha256(MODEL_A) and state["checked_at"] == 1000.0
    # Nothing but the copy, its state and the lock is left in the folder.
    assert sorted(p.name for p in pulled.path.parent.iterdir()) == sorted(
        [pulled.path.name, "state.json", ".lock"]
    )


def test_within_the_refresh_interval_no_request_is_made(
    server: ModelServer, tmp_path: Path
) -> None:
    first = _pull(server, tmp_path, 1000.0)
    second = _pull(server, tmp_path, 1000.0 + REFRESH_S - 1)

    assert second.how == "cached"
    assert second.path == first.path
    assert len(server.served.requests) == 1


def test_after_the_interval_a_conditional_get_keeps_an_unchanged_copy(
    server: ModelServer, tmp_path: Path
) -> None:
    first = _pull(server, tmp_path, 1000.0)
    second = _pull(server, tmp_path, 1000.0 + REFRESH_S)
    third = _pull(server, tmp_path, 1000.0 + REFRESH_S + 1)

    assert second.how == "not_modified"
    assert second.path == first.path and second.path.read_bytes() == MODEL_A
    assert server.served.requests[1]["If-None-Match"] == f'"{_sha256(MODEL_A)}"'
    # The 304 counts as a check: the next interval starts from it.
    assert third.how == "cached"
    assert len(server.served.requests) == 2


def test_after_a_promotion_the_new_model_replaces_the_copy(
    server: ModelServer, tmp_path: Path
) -> None:
    first = _pull(server, tmp_path, 1000.0)
    server.served.body, server.served.version = MODEL_B, "v2"

    unchanged_yet = _pull(server, tmp_path, 1000.0 + 1)
    second = _pull(server, tmp_path, 1000.0 + REFRESH_S)

    assert unchanged_yet.how == "cached" and unchanged_yet.version == "v1"
    assert second.how == "downloaded"
    assert second.version == "v2"
    assert second.path.read_bytes() == MODEL_B
    assert not first.path.exists(), "the replaced copy is removed"


def test_a_corrupt_download_is_refused_and_the_old_copy_kept(
    server: ModelServer, tmp_path: Path
) -> None:
    first = _pull(server, tmp_path, 1000.0)
    # The server announces B's hash but the bytes are something else (cut off, corrupted).
    server.served.body = MODEL_B[:-100] + b"x" * 100
    server.served.announced_sha256 = _sha256(MODEL_B)

    second = _pull(server, tmp_path, 1000.0 + REFRESH_S)

    assert second.how == "fallback"
    assert second.path == first.path and first.path.read_bytes() == MODEL_A
    assert second.warning is not None
    assert f"is not the {_sha256(MODEL_B)[:12]} the server announced" in second.warning
    assert "using the cached copy (v1" in second.warning
    assert not list(tmp_path.rglob("*.tmp")), "the bad download is deleted"
    # Not counted as a check: the next run asks again.
    assert _pull(server, tmp_path, 1000.0 + REFRESH_S + 1).how == "fallback"


def test_a_corrupt_first_download_is_an_error(server: ModelServer, tmp_path: Path) -> None:
    server.served.announced_sha256 = _sha256(MODEL_B)

    with pytest.raises(ModelPullError, match=r"corrupt or cut off.*no verified copy"):
        _pull(server, tmp_path, 1000.0)
    assert not list(tmp_path.rglob("*.onnx"))


def test_a_server_that_is_down_falls_back_to_the_copy_with_a_warning(
    server: ModelServer, tmp_path: Path
) -> None:
    first = _pull(server, tmp_path, 1000.0)
    server.stop()

    second = _pull(server, tmp_path, 1000.0 + REFRESH_S)

    assert second.how == "fallback"
    assert second.path == first.path
    assert second.warning is not None and "cannot reach the server" in second.warning
    assert "last checked 1970-01-01T00:16:40+00:00" in second.warning


def test_no_copy_and_no_server_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.onnx"

    with pytest.raises(ModelPullError) as raised:
        pull_model(url, tmp_path, timeout_s=5.0)
    assert str(raised.value).startswith(f"{url}: cannot reach the server")
    assert "no verified copy in" in str(raised.value)


def test_a_refusal_names_the_servers_reason_and_falls_back(
    server: ModelServer, tmp_path: Path
) -> None:
    _pull(server, tmp_path, 1000.0)
    server.served.status = 401
    server.served.error_body = json.dumps({"detail": "unknown API key"}).encode()

    second = _pull(server, tmp_path, 1000.0 + REFRESH_S)

    assert second.how == "fallback"
    assert second.warning is not None
    assert "the server answered 401 (unknown API key)" in second.warning


def test_a_download_that_cannot_be_verified_is_not_used(
    server: ModelServer, tmp_path: Path
) -> None:
    server.served.send_etag = server.served.send_sha256 = False

    with pytest.raises(ModelPullError, match="cannot be verified"):
        _pull(server, tmp_path, 1000.0)


def test_an_etag_holding_the_sha256_is_enough_to_verify(
    server: ModelServer, tmp_path: Path
) -> None:
    server.served.send_sha256 = False

    pulled = _pull(server, tmp_path, 1000.0)

    assert pulled.how == "downloaded" and pulled.sha256 == _sha256(MODEL_A)


def test_a_copy_altered_on_disk_is_downloaded_again(server: ModelServer, tmp_path: Path) -> None:
    first = _pull(server, tmp_path, 1000.0)
    first.path.write_bytes(b"flipped bits")

    second = _pull(server, tmp_path, 1000.0 + 1)

    assert second.how == "downloaded"
    assert second.path.read_bytes() == MODEL_A
    assert "If-None-Match" not in server.served.requests[1]


def test_each_url_has_its_own_copy_in_one_cache(server: ModelServer, tmp_path: Path) -> None:
    first = _pull(server, tmp_path, 1000.0)
    other = pull_model(server.url + "?project=2", tmp_path, clock=lambda: 1000.0)

    assert other.path.parent != first.path.parent
    assert other.how == "downloaded"


def test_a_url_that_is_not_http_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="http:// or https://"):
        pull_model("ftp://example.org/model.onnx", tmp_path)
