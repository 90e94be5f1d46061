"""The review page over HTTP: the page and its assets, signing in for a session cookie, the
cookie standing in for the key (with a CSRF token on every state change), revocation and
sign-out. The page itself, in a real browser: tests/serve/pages."""

from __future__ import annotations

from http.cookies import SimpleCookie

from serve.api.auth import revoke_api_key
from serve.api.sessions import CSRF_HEADER, SESSION_COOKIE, SESSION_TTL_S
from tests.fakes.vlm_server import FakeVLMServer
from tests.serve.api.test_review import finished_job, key_headers
from tests.serve.conftest import Service


def _sign_in(service: Service, token: str) -> dict[str, str]:
    answer = service.client.post("/review/session", json={"api_key": token})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_the_page_and_its_assets_are_served_with_a_strict_policy(service: Service) -> None:
    client = service.client
    moved = client.get("/review", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "review/"
    page = client.get("/review/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    # Every script and style the page names is served from the package: nothing from elsewhere.
    for asset in (
        "assets/review/review.js",
        "assets/review/review.css",
        "assets/vendor/konva/konva.min.js",
        "assets/vendor/konva/LICENSE",
    ):
        assert f"{asset}" in page.text or asset.endswith("LICENSE")
        assert client.get(f"/review/{asset}").status_code == 200, asset
    assert "http" not in page.text.replace("http-equiv", "")
    assert client.get("/review/assets/review/../../../pyproject.toml").status_code == 404


def test_a_key_signs_in_once_and_the_cookie_stands_in_for_it(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = finished_job(service, vlm_server, images=1)
    key_id, headers = key_headers(service, "reviewer", "ana")
    client = service.client
    token = headers["Authorization"].removeprefix("Bearer ")

    refused = client.post("/review/session", json={"api_key": "pl_nope.nope"})
    assert refused.status_code == 401 and SESSION_COOKIE not in refused.cookies

    answer = client.post("/review/session", json={"api_key": f"  {token}\n"})
    assert answer.status_code == 200, answer.text
    session = answer.json()
    assert session["project_id"] == service.project_id and session["key_id"] == key_id
    assert session["role"] == "reviewer" and session["api_base"] is None
    cookie = SimpleCookie(answer.headers["set-cookie"])[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "strict" and cookie["path"] == "/"
    assert int(cookie["max-age"]) == SESSION_TTL_S
    # The cookie never holds the key itself.
    assert token.split(".", 1)[1] not in cookie.value

    assert client.get("/review/session").json()["csrf_token"] == session["csrf_token"]
    review = service.url(f"/jobs/{job_id}/review")
    queued = client.get(f"{review}/queue")
    assert queued.status_code == 200, queued.text
    item = queued.json()["items"][0]
    # Reviewer keys see the project's jobs through the cookie too, and no more than the key.
    assert client.get(service.url("/jobs")).status_code == 200
    assert client.post(service.url("/label-jobs"), json={}).status_code == 403

    decision = {"proposal_id": item["proposal_id"], "action": "accept", "base_version": 0}
    # A state change without the token (what a forged cross-site form would send) is refused.
    for sent in ({}, {CSRF_HEADER: "0" * 64}, {CSRF_HEADER: ""}):
        forged = client.post(f"{review}/decisions", json={"decisions": [decision]}, headers=sent)
        assert forged.status_code == 403, forged.text
        assert CSRF_HEADER in forged.json()["detail"]
    done = client.post(
        f"{review}/decisions",
        json={"decisions": [decision]},
        headers={CSRF_HEADER: session["csrf_token"]},
    )
    assert done.status_code == 200, done.text
    assert done.json()["results"][0]["state"]["reviewer"] == key_id

    # A bearer key wins over a cookie and needs no token (scripts are not browsers).
    _, other = key_headers(service, "reviewer", "bo")
    assert client.get(f"{review}/summary", headers=other).status_code == 200

    # Revoking the key ends its sessions at once.
    revoke_api_key(service.db, key_id)
    assert client.get(f"{review}/queue").status_code == 401
    assert client.get("/review/session").status_code == 401


def test_a_forged_or_altered_cookie_is_no_session(service: Service) -> None:
    client = service.client
    session = _sign_in(service, service.headers["Authorization"].removeprefix("Bearer "))
    cookie = client.cookies[SESSION_COOKIE]
    key_id, expires, signature = cookie.split(".")
    for forged in (
        f"{key_id}.{int(expires) + 3600}.{signature}",
        f"{key_id}.{expires}.{'0' * len(signature)}",
        "garbage",
    ):
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, forged)
        assert client.get(service.url()).status_code == 401
        assert client.get("/review/session").status_code == 401
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    assert client.get(service.url()).status_code == 200
    assert session["csrf_token"]


def test_signing_out_needs_the_token_and_ends_the_session(service: Service) -> None:
    client = service.client
    session = _sign_in(service, service.headers["Authorization"].removeprefix("Bearer "))
    assert client.delete("/review/session").status_code == 403
    out = client.delete("/review/session", headers={CSRF_HEADER: session["csrf_token"]})
    assert out.status_code == 204
    assert SESSION_COOKIE not in client.cookies
    assert client.get("/review/session").status_code == 401
