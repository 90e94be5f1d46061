"""Hostile input over HTTP: every bad file or body is a 4xx with a clear message, and the good
files sent beside it are kept (the unit tests of serve/ingest.py and serve/fetch.py cover the
cases one by one; these prove the API wires them in)."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.fakes.zips import overlapping_zip
from tests.serve.conftest import Service, png_bytes


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG file whose header claims a decompression-bomb size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def post_files(service: Service, files: list[tuple[str, bytes]]):  # type: ignore[no-untyped-def]
    return service.client.post(
        service.url("/images"),
        headers=service.headers,
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
    )


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_bad_files_are_rejected_one_by_one_and_the_rest_kept(service: Service) -> None:
    good = png_bytes(1)
    truncated = png_bytes(2)[:200]
    response = post_files(
        service,
        [
            ("good.png", good),
            ("truncated.png", truncated),
            ("bomb.png", huge_png_header()),
            ("empty.jpg", b""),
            ("report.jpg", b"%PDF-1.7\n1 0 obj\n"),
            ("page.png", b"<!doctype html><html></html>"),
        ],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert [image["filename"] for image in body["accepted"]] == ["good.png"]
    reasons = {item["name"]: item["reason"] for item in body["rejected"]}
    assert reasons == {
        "truncated.png": "truncated",
        "bomb.png": "too_many_pixels",
        "empty.jpg": "zero_bytes",
        "report.jpg": "not_an_image",
        "page.png": "not_an_image",
    }
    assert all(item["detail"] or item["reason"] == "zero_bytes" for item in body["rejected"])
    assert body["accepted"][0]["already_present"] is False
    # The same bytes again are the same image, not a second copy, and the answer says so.
    again = post_files(service, [("copy.png", good), ("new.png", png_bytes(3))]).json()
    [(copy_id, copy_present), (new_id, new_present)] = [
        (image["id"], image["already_present"]) for image in again["accepted"]
    ]
    assert copy_id == body["accepted"][0]["id"] and copy_present is True
    assert new_id != copy_id and new_present is False


def test_only_bad_files_is_422_naming_each(service: Service) -> None:
    response = post_files(service, [("a.jpg", b"hello"), ("b.png", huge_png_header())])
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "a.jpg: not_an_image" in detail and "b.png: too_many_pixels" in detail


def ingested(source: str, outcome: str) -> float:
    """The images-ingested counter so far (the metric the service exports)."""
    from prometheus_client import REGISTRY

    labels = {"source": source, "outcome": outcome}
    return REGISTRY.get_sample_value("promptlabel_images_ingested_total", labels) or 0.0


def test_zip_upload_skips_unsafe_members_and_keeps_images(service: Service) -> None:
    rejected_before, accepted_before = ingested("zip", "rejected"), ingested("zip", "accepted")
    archive = zip_of(
        {
            "photos/one.png": png_bytes(1),
            "../../etc/passwd.png": png_bytes(2),
            "/abs/three.png": png_bytes(3),
            "inner.zip": zip_of({"x.png": png_bytes(4)}),
            "notes.txt": b"just text",
            "__MACOSX/._one.png": b"junk",
        }
    )
    response = post_files(service, [("batch.zip", archive)])
    assert response.status_code == 201, response.text
    body = response.json()
    assert [image["filename"] for image in body["accepted"]] == ["one.png"]
    reasons = {item["name"]: item["reason"] for item in body["rejected"]}
    assert reasons["batch.zip/../../etc/passwd.png"] == "unsafe_path"
    assert reasons["batch.zip/inner.zip"] == "nested_archive"
    assert reasons["batch.zip/notes.txt"] == "not_an_image"
    assert not any("__MACOSX" in name for name in reasons)
    # Each refused member is counted in the metrics, as a refused upload is.
    assert ingested("zip", "rejected") - rejected_before == len(body["rejected"])
    assert ingested("zip", "accepted") - accepted_before == 1
    # Nothing was written outside the data folder.
    assert not (service.settings.data_dir.parent / "etc").exists()


def test_deflate_bomb_in_a_zip_is_refused(service: Service) -> None:
    service.settings.max_image_bytes = 1024 * 1024
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.png", b"\x00" * (20 * 1024 * 1024))
        archive.writestr("fine.png", png_bytes(1))
    response = post_files(service, [("bomb.zip", buffer.getvalue())])
    assert response.status_code == 201
    assert response.json()["rejected"][0]["reason"] == "too_large"
    assert len(response.json()["accepted"]) == 1


def test_not_a_zip_named_zip_is_a_rejected_file(service: Service) -> None:
    rejected_before = ingested("zip", "rejected")
    response = post_files(service, [("x.zip", b"PK\x03\x04 broken"), ("ok.png", png_bytes(5))])
    assert response.status_code == 201
    assert response.json()["rejected"][0]["name"] == "x.zip"
    assert ingested("zip", "rejected") - rejected_before == 1


def test_oversize_upload_is_413_before_it_is_read(service: Service) -> None:
    limit = service.settings.max_upload_bytes
    response = service.client.post(
        service.url("/images"),
        headers={
            **service.headers,
            "Content-Type": "multipart/form-data; boundary=x",
            "Content-Length": str(limit + 1),
        },
        content=b"--x--",
    )
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_streamed_body_over_the_limit_is_413(service: Service) -> None:
    limit = service.settings.max_upload_bytes

    def chunks() -> Iterator[bytes]:
        yield b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        sent = 0
        while sent <= limit:
            yield b"\x00" * 65536
            sent += 65536

    response = service.client.post(
        service.url("/images"),
        headers={**service.headers, "Content-Type": "multipart/form-data; boundary=x"},
        content=chunks(),
    )
    assert response.status_code == 413


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=x"])
def test_json_routes_keep_their_limit_whatever_the_content_type_says(
    service: Service, content_type: str
) -> None:
    # The upload limit is for the upload routes; claiming multipart elsewhere must not buy 512 MiB.
    body = b'{"image_ids": ["' + b"x" * (2 * 1024 * 1024) + b'"]}'
    response = service.client.post(
        service.url("/label-jobs"),
        headers={**service.headers, "Content-Type": content_type},
        content=body,
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "request body over the 1048576-byte limit for JSON bodies"


def test_nul_characters_in_ids_and_names_are_client_errors(service: Service) -> None:
    # PostgreSQL refuses NUL in text (psycopg raises DataError); that must not become a 500.
    for path in ("/jobs/a%00b", "/jobs/a%00b/results", "/images/a%00b"):
        response = service.client.get(service.url(path), headers=service.headers)
        assert response.status_code in (404, 422), (path, response.status_code, response.text)
    submit = service.client.post(
        service.url("/label-jobs"), headers=service.headers, json={"image_ids": ["a\u0000b"]}
    )
    assert submit.status_code in (404, 422), submit.text
    upload = post_files(service, [("a\x00b.png", png_bytes(7))])
    assert upload.status_code < 500, upload.text


def test_made_up_methods_count_as_one_metrics_label(service: Service) -> None:
    from prometheus_client import REGISTRY

    other = {"method": "OTHER", "route": "/healthz", "status": "405"}
    before = REGISTRY.get_sample_value("promptlabel_http_requests_total", other) or 0.0
    for i in range(3):
        assert service.client.request(f"BREW{i}", "/healthz").status_code == 405

    metrics = service.client.get("/metrics", headers=service.headers).text
    assert "BREW" not in metrics
    assert REGISTRY.get_sample_value("promptlabel_http_requests_total", other) == before + 3


@pytest.fixture
def small_upload_limit(service: Service) -> Service:
    """The app with a 1 MiB upload limit (the middleware reads the limit at startup)."""
    from fastapi.testclient import TestClient

    from serve.api.app import create_app

    settings = service.settings.model_copy(update={"max_upload_bytes": 1024 * 1024})
    app = create_app(settings, db=service.db)
    with TestClient(app) as client:
        yield Service(client, settings, service.db, service.project_id, service.headers)


def test_chunked_upload_over_a_small_limit_is_413(small_upload_limit: Service) -> None:
    response = post_files(small_upload_limit, [("big.png", b"\x00" * (2 * 1024 * 1024))])
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "request body over the 1048576-byte upload limit (PROMPTLABEL_MAX_UPLOAD_BYTES)"
    )
    # The path with a trailing slash (redirected once read) gets the upload limit too.
    response = small_upload_limit.client.post(
        small_upload_limit.url("/predict/"),
        headers={**small_upload_limit.headers, "Content-Type": "image/png"},
        content=b"\x00" * (2 * 1024 * 1024),
    )
    assert response.status_code == 413
    assert "upload limit (PROMPTLABEL_MAX_UPLOAD_BYTES)" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 422, "JSON"),
        (b'{"classes": 5}', 422, "classes"),
        (b'{"classes": []}', 422, "classes"),
        (b'{"classes": {"a": ""}}', 422, "detect"),
        (b'{"classes": [{"name": "a", "detect": "a", "colour": "red"}]}', 422, "colour"),
        (
            b'{"classes": [{"name": "a", "detect": "a"}, {"name": "a", "detect": "b"}]}',
            422,
            "duplicate",
        ),
    ],
)
def test_bad_ontologies_are_422(service: Service, body: bytes, status: int, message: str) -> None:
    response = service.client.put(
        service.url("/ontology"),
        headers={**service.headers, "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == status, response.text
    assert message in response.text


def test_huge_ontology_is_refused(service: Service) -> None:
    many = {"classes": {f"class{i}": f"thing {i}" for i in range(5000)}}
    response = service.client.put(service.url("/ontology"), headers=service.headers, json=many)
    assert response.status_code == 422
    assert "at most 256" in response.text
    giant = {"classes": {"a": "x" * (2 * 1024 * 1024)}}
    response = service.client.put(service.url("/ontology"), headers=service.headers, json=giant)
    assert response.status_code == 413
    # The project still has its old ontology.
    project = service.client.get(service.url(), headers=service.headers).json()
    assert project["ontology"]["classes"][0]["name"] == "shape"


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        data = png_bytes(9)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_ingestion_refuses_private_addresses_unless_allowed(
    service: Service, image_server: str
) -> None:
    urls = [
        f"{image_server}/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/x.png",
        "http://[::1]/x.png",
        "file:///etc/passwd",
    ]
    response = service.client.post(
        service.url("/images/fetch"), headers=service.headers, json={"urls": urls}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    for url in urls:
        assert url in detail
    assert "loopback" in detail and "PROMPTLABEL_URL_ALLOWLIST" in detail

    service.settings.url_allowlist = ["127.0.0.1/32"]
    response = service.client.post(
        service.url("/images/fetch"),
        headers=service.headers,
        json={"urls": [f"{image_server}/a.png", f"{image_server}/redirect"]},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["accepted"][0]["source_url"] == f"{image_server}/a.png"
    assert body["rejected"][0]["reason"] == "refused"
    assert "169.254.169.254" in body["rejected"][0]["detail"]


# ----------------------------------------------------------------------------- costly uploads


def test_identical_bytes_are_decoded_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A decode can cost half a second and half a GiB (an image at the pixel limit); the same
    # bytes again, in this request or already in the project, must not be decoded again.
    from labeler.core.images import decode_image_bytes

    decoded: list[str] = []

    def counting_decode(data: bytes, **kwargs: Any) -> Any:
        decoded.append(kwargs["name"])
        return decode_image_bytes(data, **kwargs)

    monkeypatch.setattr("serve.ingest.uploads.decode_image_bytes", counting_decode)
    image, truncated = png_bytes(11), png_bytes(12)[:300]
    copies = zip_of(
        {f"copy{i}.png": image for i in range(8)} | {f"cut{i}.png": truncated for i in range(3)}
    )

    body = post_files(service, [("first.png", image), ("copies.zip", copies)]).json()

    assert decoded == ["first.png", "copies.zip/cut0.png"]
    assert len(body["accepted"]) == 9
    assert len({image["id"] for image in body["accepted"]}) == 1
    assert [(r["name"], r["reason"]) for r in body["rejected"]] == [
        (f"copies.zip/cut{i}.png", "truncated") for i in range(3)
    ]

    decoded.clear()
    again = post_files(service, [("again.png", image)])
    assert again.status_code == 201
    assert again.json()["accepted"][0]["id"] == body["accepted"][0]["id"]
    assert decoded == []  # the project has these bytes: they were checked when stored


@pytest.mark.parametrize(
    ("setting", "limit", "words"),
    [
        ("max_zip_total_bytes", 12 * 1024 * 1024, "2097152 are left"),
        ("max_zip_members", 50, "more than 10 entries"),
    ],
    ids=["bytes", "entries"],
)
def test_the_zip_limits_hold_for_the_whole_request(
    service: Service, setting: str, limit: int, words: str
) -> None:
    # 20 entries inflating to 5 MiB each time: within any limit one archive at a time.
    archive = overlapping_zip(entries=20, member_bytes=256 * 1024)
    setattr(service.settings, setting, limit)

    response = post_files(
        service,
        [("ok.png", png_bytes(13)), ("a.zip", archive), ("b.zip", archive), ("c.zip", archive)],
    )

    assert response.status_code == 201, response.text
    rejected = response.json()["rejected"]
    assert not any(r["name"].startswith("c.zip/") for r in rejected)
    [refused] = [r for r in rejected if not r["name"].startswith(("a.zip/", "b.zip/"))]
    assert (refused["name"], refused["reason"]) == ("c.zip", "upload_limit")
    assert words in refused["detail"] and "send it in another upload" in refused["detail"]


def test_a_member_name_that_is_not_utf8_loses_only_that_member(service: Service) -> None:
    archive = zip_of({"good.png": png_bytes(14), "bad-\u00e9.png": png_bytes(15)})
    archive = archive.replace("bad-\u00e9.png".encode(), b"bad-\xff\xfe.png")

    response = post_files(service, [("a.zip", archive)])

    assert response.status_code == 201, response.text
    body = response.json()
    assert [image["filename"] for image in body["accepted"]] == ["good.png"]
    assert [(r["name"], r["reason"]) for r in body["rejected"]] == [
        ("a.zip/bad-\\xff\\xfe.png", "bad_name")
    ]


def test_long_names_are_cut_in_answers(service: Service) -> None:
    archive = zip_of(
        {"ok.png": png_bytes(16)} | {f"{i}" + "\x01" * 60_000: b"x" for i in range(10)}
    )
    long_file_name = "n" * 3_000 + ".zip"  # multipart headers stop at 4 KiB

    response = post_files(service, [(long_file_name, archive)])

    assert response.status_code == 201, response.text
    assert len(response.content) < 40_000  # was 2.4 MB: every name echoed, escaped
    for rejected in response.json()["rejected"]:
        assert len(rejected["name"]) <= 1024
        assert rejected["name"].startswith("nnn") and "…" in rejected["name"]


# ----------------------------------------------------------------------------- slow URLs


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()
    for connection in held:
        connection.close()


@pytest.mark.timeout(30)
def test_url_fetching_stops_at_the_request_deadline(
    service: Service, image_server: str, silent_server: str
) -> None:
    service.settings.url_allowlist = ["127.0.0.1/32"]
    service.settings.fetch_timeout_s = 10.0
    service.settings.fetch_request_timeout_s = 0.5
    urls = [f"{image_server}/a.png"] + [f"{silent_server}/{i}.png" for i in range(4)]

    started = time.monotonic()
    response = service.client.post(
        service.url("/images/fetch"), headers=service.headers, json={"urls": urls}
    )
    elapsed_s = time.monotonic() - started

    assert response.status_code == 201, response.text
    body = response.json()
    assert [image["source_url"] for image in body["accepted"]] == urls[:1]
    assert [(r["name"], r["reason"]) for r in body["rejected"]] == [
        (url, "deadline") for url in urls[1:]
    ]
    assert all("PROMPTLABEL_FETCH_REQUEST_TIMEOUT_S" in r["detail"] for r in body["rejected"])
    assert elapsed_s < 3  # not 4 x 10 s


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_numbers_json_cannot_hold_are_422_naming_the_field(service: Service, literal: str) -> None:
    # Python's JSON reader takes them; the answer quotes the refused value back, which once
    # made the answer itself fail (500).
    for path, body in (
        ("/label-jobs", f'{{"box_threshold": {literal}}}'),
        ("/images/fetch", f'{{"urls": [{literal}]}}'),
    ):
        response = service.client.post(
            service.url(path),
            headers={**service.headers, "Content-Type": "application/json"},
            content=body,
        )
        assert response.status_code == 422, (path, response.text)
        [error] = response.json()["detail"]
        assert error["loc"][:2] == ["body", "box_threshold" if "label" in path else "urls"]


def test_a_json_body_without_a_json_content_type_is_415_saying_so(service: Service) -> None:
    ontology_yaml = "classes:\n  cat: a cat\n"
    for method, path, content_type, body in (
        ("POST", "/label-jobs", None, b'{"detector": "default"}'),
        ("POST", "/label-jobs", "text/plain", b"{}"),
        ("PUT", "/ontology", "application/x-yaml", ontology_yaml.encode()),
    ):
        headers = dict(service.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = service.client.request(method, service.url(path), headers=headers, content=body)
        assert response.status_code == 415, (path, response.text)
        assert response.json()["detail"] == (
            f"Content-Type {content_type or '(none)'!r}: this route takes a JSON body; send it "
            "with 'Content-Type: application/json'"
        )
    # A JSON media type with a suffix is JSON; a JSON array where an object belongs stays 422.
    for content_type, body, status in (
        ("application/merge-patch+json", b'{"classes": {"cat": "a cat"}}', 200),
        ("application/json", b"[1]", 422),
    ):
        response = service.client.put(
            service.url("/ontology"),
            headers={**service.headers, "Content-Type": content_type},
            content=body,
        )
        assert response.status_code == status, (content_type, response.text)


def test_an_upload_with_no_file_says_so(service: Service) -> None:
    response = post_files(service, [("empty.zip", zip_of({}))])
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "no usable image: the upload holds no file (an empty archive, or only folders, hidden "
        "files and __MACOSX/)"
    )


def test_ontology_names_are_checked_as_data_not_as_yaml(service: Service) -> None:
    def put(classes: object) -> tuple[int, str]:
        response = service.client.put(
            service.url("/ontology"), headers=service.headers, json={"classes": classes}
        )
        return response.status_code, response.text

    # YAML limits simple keys to 1024 characters; JSON has no such limit, and the answer is
    # about the name, not about YAML.
    status, text = put({"a" * 1100: "thing"})
    assert status == 422 and "at most 256 characters" in text and "YAML" not in text
    for name in ("a\u0000b", "line\nbreak", "bell\u0007", "zero\u200bwidth"):
        status, text = put({name: "thing"})
        assert status == 422 and "must not hold control or invisible characters" in text, name
    status, text = put([{"name": "ok", "detect": "a\u0000phrase"}])
    assert status == 422 and "control or invisible" in text
    assert put({"café crème": "a cup of coffee"})[0] == 200


def test_a_flood_of_uploads_queues_in_its_own_pool_and_other_routes_still_answer(
    service: Service, image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import serve.api.routes.images

    service.settings.url_allowlist = ["127.0.0.1/32"]
    pools = service.client.app.state.pools  # type: ignore[attr-defined]
    one_at_a_time = {
        name: ThreadPoolExecutor(1, thread_name_prefix=f"{name}-test")
        for name in ("ingest", "fetch")
    }
    for name, pool in one_at_a_time.items():
        monkeypatch.setitem(pools, name, pool)
    release, entered, lock = threading.Event(), threading.Semaphore(0), threading.Lock()
    inside, most_inside = 0, 0
    threads: list[str] = []

    def held(ingest: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal inside, most_inside
            with lock:
                inside += 1
                most_inside = max(most_inside, inside)
                threads.append(threading.current_thread().name)
            entered.release()
            release.wait(timeout=30)
            with lock:
                inside -= 1
            return ingest(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        serve.api.routes.images, "ingest_files", held(serve.api.routes.images.ingest_files)
    )
    monkeypatch.setattr(
        serve.api.routes.images, "ingest_urls", held(serve.api.routes.images.ingest_urls)
    )

    def upload(seed: int) -> int:
        return post_files(service, [(f"{seed}.png", png_bytes(seed))]).status_code

    def fetch(_: int) -> int:
        return service.client.post(
            service.url("/images/fetch"),
            headers=service.headers,
            json={"urls": [f"{image_server}/a.png"]},
        ).status_code

    try:
        with ThreadPoolExecutor(6) as clients:
            answers = [clients.submit(upload, seed) for seed in range(3)]
            answers += [clients.submit(fetch, i) for i in range(3)]
            # One upload and one fetch are inside; the other four wait in their pools, ...
            assert entered.acquire(timeout=30) and entered.acquire(timeout=30)
            # ... and a route that needs the shared thread pool still answers meanwhile.
            assert service.client.get(service.url(), headers=service.headers).status_code == 200
            assert most_inside == 2
            release.set()
            assert sorted(answer.result(timeout=60) for answer in answers) == [201] * 6
    finally:
        release.set()
        for pool in one_at_a_time.values():
            pool.shutdown()
    assert sorted(name.split("-test")[0] for name in threads) == ["fetch"] * 3 + ["ingest"] * 3
