"""Admin token guessing is rate-limited per client: 429 with Retry-After after N wrong tokens
in the window, the right token is then not even compared, successes never count, and other
clients are unaffected. The in-process app (TestClient) with a fake clock for the window."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.auth_limit import MAX_CLIENTS, FailedAuthLimiter
from service.app import create_app
from service.config import Settings
from service_fixtures import AUTH, TOKEN

WRONG = {"Authorization": "Bearer guess"}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def admin(tiny_base_dir, tmp_path):
    """(client factory, clock): the app with 5 failures per 60 s allowed."""
    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", admin_token=TOKEN, device="cpu",
                        auth_failures_per_window=5, auth_failure_window_s=60)
    app = create_app(settings)
    clock = Clock()
    app.state.auth_limiter.clock = clock
    with TestClient(app, client=("10.0.0.1", 5000)) as c:
        yield (lambda host: TestClient(app, client=(host, 5000))), c, clock


def test_wrong_tokens_past_the_limit_get_429_with_retry_after(admin):
    clients, attacker, clock = admin
    assert [attacker.get("/v1/admin/diffs", headers=WRONG).status_code for _ in range(5)] == [403] * 5
    r = attacker.get("/v1/admin/diffs", headers=WRONG)
    assert r.status_code == 429 and r.headers["Retry-After"] == "60" and "too many failed" in r.json()["detail"]
    # The right token from the limited client is not compared: guessing gains nothing.
    assert attacker.get("/v1/admin/diffs", headers=AUTH).status_code == 429
    clock.t += 30
    assert attacker.get("/v1/admin/diffs", headers=WRONG).headers["Retry-After"] == "30"
    # Another client, wrong or right, is unaffected.
    other = clients("10.0.0.2")
    assert other.get("/v1/admin/diffs", headers=AUTH).status_code == 200
    assert other.get("/v1/admin/diffs", headers=WRONG).status_code == 403
    clock.t += 31  # the oldest failures left the window
    assert attacker.get("/v1/admin/diffs", headers=AUTH).status_code == 200


def test_successful_authentications_never_count(admin):
    _, c, _ = admin
    assert all(c.get("/v1/admin/diffs", headers=AUTH).status_code == 200 for _ in range(50))
    assert [c.get("/v1/admin/diffs", headers=WRONG).status_code for _ in range(5)] == [403] * 5


def test_the_limiter_remembers_a_bounded_number_of_clients():
    limiter = FailedAuthLimiter(1, 60)
    for i in range(MAX_CLIENTS + 100):
        limiter.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(limiter._failures) == MAX_CLIENTS
    assert limiter.retry_after("10.0.0.0") is None and limiter.retry_after("10.0.0.200") is not None
