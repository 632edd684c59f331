"""Careless and hostile request bodies against a real uvicorn server (embedded Redis, the tiny
base, every diff loaded): each gets a 4xx whose detail names the problem, the server logs at
most one line for it and never a traceback, the keep-alive connection survives, and a normal
request on the same connection still answers 200. Also: the streaming body cap and diff
uploads whose JSON header or metadata nests too deep."""

from __future__ import annotations

import json
import logging
import math
import socket
import struct
import time

import httpx
import pytest

from diffs_store.redis_connection import shutdown_embedded
from tests.live_server import RESOLVED, LiveServer
from tests.support import AUTH, TOKEN, upload_all

pytestmark = pytest.mark.faults
from service.config import Settings

CAP = 256 * 1024  # the body cap of the server under test


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def live(tiny_base_dir, tiny_diffs, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    settings = Settings(base_model=str(tiny_base_dir), data_dir=root / "data", admin_token=TOKEN, device="cpu",
                        max_body_bytes=CAP, torch_threads=1, registry_poll_ms=100)
    try:
        with LiveServer(settings) as server:
            upload_all(server.url, tiny_diffs)
            yield server
    finally:
        shutdown_embedded(root / "data")


@pytest.fixture()
def logs():
    """Every record the server's loggers emit (uvicorn's do not propagate to the root)."""
    handler = _Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error")]
    for lg in loggers:
        lg.addHandler(handler)
    old = logging.getLogger("service").level
    logging.getLogger("service").setLevel(logging.INFO)
    yield handler.records
    logging.getLogger("service").setLevel(old)
    for lg in loggers:
        lg.removeHandler(handler)


MALFORMED = {
    "empty language and task": (b'{"language":"","task":"","inputs":["x"]}', "language ''"),
    "empty task": (b'{"task":"","inputs":["x"]}', "task name ''"),
    "600 nested arrays": (b'{"task":"ner","inputs":' + b"[" * 600 + b"]" * 600 + b"}", "601 levels deep"),
    "nested in an object": (b'{"task":"ner","inputs":[' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"]}", "limit is 32"),
    "lone surrogate": (b'{"task":"ner","inputs":["\\ud800"]}', "inputs[0]: a lone UTF-16 surrogate"),
    "lone surrogate in a word list": (b'{"task":"ner","inputs":[["ok","x\\udfff"]]}', "inputs[0][1]: a lone"),
    "NaN": (b'{"task":"ner","inputs":NaN}', "NaN"),
    "Infinity in a list": (b'{"task":"ner","inputs":[-Infinity]}', "Infinity"),
    "invalid UTF-8": (b'{"task":"ner","inputs":["\xff"]}', "not valid UTF-8 (byte 25)"),
    "not JSON": (b'{"task":"ner","inputs":[1', "invalid JSON"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_body_gets_a_4xx_naming_it_and_one_log_line(live, logs, name):
    body, fragment = MALFORMED[name]
    with httpx.Client(base_url=live.url, timeout=30) as client:
        r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
        detail = r.json()["detail"]
        assert isinstance(detail, str) and fragment in detail, detail
        # the same keep-alive connection still serves a normal request
        ok = client.post("/v1/predict", json=RESOLVED)
        assert ok.status_code == 200, ok.text
        assert client.get("/healthz").status_code == 200
    assert not [rec for rec in logs if rec.exc_info], [rec.getMessage()[:200] for rec in logs if rec.exc_info]
    assert not [rec for rec in logs if rec.levelno >= logging.ERROR]
    assert len([rec for rec in logs if rec.name.startswith("service")]) <= 1


def test_a_surrogate_pair_is_valid_text(live):
    """Escaped surrogate *pairs* (what json.dumps writes for an emoji) are fine."""
    r = httpx.post(live.url + "/v1/predict", content=json.dumps({"task": "ner", "inputs": ["lagos \U0001F600"]}),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text


def test_validation_error_quotes_no_input(live):
    """A 422 from the request model is one string naming the field, never the input back."""
    r = httpx.post(live.url + "/v1/predict", json={"task": "ner", "inputs": "x" * 5000}, timeout=30)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail.startswith("inputs:") and "xxxx" not in detail


def test_validation_handler_encodes_whatever_the_error_holds():
    from service.api.errors import describe_validation

    errors = [{"type": "x", "loc": ("body", "inputs", i), "msg": "bad \ud800 value", "input": math.nan}
              for i in range(9)]
    text = describe_validation(errors)
    text.encode("utf-8")  # would raise on a lone surrogate
    assert text.startswith("inputs[0]: bad \\ud800 value") and text.endswith("and 4 more")


def _send_raw(port: int, data: bytes, read_s: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + read_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and out.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                break
        return out


def test_declared_body_above_the_cap_is_refused_before_reading(live):
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {300 * 1024**2}\r\n\r\n").encode()
    t0 = time.monotonic()
    answer = _send_raw(live.port, head)  # no byte of the body is ever sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert f"the limit is {CAP} bytes".encode() in answer
    assert b"connection: close" in answer.lower()
    assert time.monotonic() - t0 < 5


def test_streamed_body_above_the_cap_is_refused_once_it_passes(live):
    """A chunked body (no Content-Length) is counted as it arrives."""
    sent = 0

    def chunks():
        nonlocal sent
        piece = b'{"task":"ner","inputs":["' + b"a" * 65536
        while sent < 50 * 1024**2:
            sent += len(piece)
            yield piece
            piece = b"a" * 65536

    import psutil

    rss_before = psutil.Process().memory_info().rss  # the server runs in this process
    try:
        r = httpx.post(live.url + "/v1/predict", content=chunks(), headers={"content-type": "application/json"},
                       timeout=30)
        assert r.status_code == 413, r.text
        assert f"limit of {CAP} bytes" in r.json()["detail"]
        answer = r.status_code
    except httpx.HTTPError:
        answer = "closed"  # the server may close while the client is still sending: the cut is what counts
    grew = psutil.Process().memory_info().rss - rss_before
    print(json.dumps({"streamed_body": "50 MB chunked", "answer": answer, "sent_before_cut_mb": round(sent / 2**20, 1),
                      "cap_kb": CAP // 1024, "rss_growth_mb": round(grew / 2**20, 1)}))
    assert sent < 10 * 1024**2, f"the server read {sent} bytes past a {CAP}-byte cap"
    assert grew < 64 * 2**20


def test_body_under_the_cap_reaches_the_route(live):
    body = b'{"task": "ner", "inputs": ["john"]' + b" " * (CAP - 100) + b"}"  # whitespace is valid JSON
    assert len(body) <= CAP
    r = httpx.post(live.url + "/v1/predict", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text


# -- diff uploads whose JSON nests too deep ----------------------------------------------------


def _rewrite_header(data: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    text = edit(header)
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def _deep_recipe(header: dict) -> bytes:
    header["__metadata__"]["recipe"] = "[" * 5000 + "]" * 5000
    return json.dumps(header).encode()


def _deep_header(header: dict) -> bytes:
    text = json.dumps(header).encode()
    return text[:-1] + b', "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"


@pytest.mark.parametrize("edit, where", [(_deep_recipe, "metadata 'recipe'"), (_deep_header, "the header")])
def test_upload_with_deeply_nested_json_is_refused(live, tiny_diffs, edit, where):
    data = _rewrite_header(next(iter(tiny_diffs.values())), edit)
    before = httpx.get(live.url + "/v1/admin/diffs", headers=AUTH, timeout=30).json()["diffs"]
    r = httpx.post(live.url + "/v1/admin/diffs", files={"file": ("d.safetensors", data)}, headers=AUTH, timeout=60)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["detail"].startswith("nested_too_deep: ") and where in r.json()["detail"]
    assert httpx.get(live.url + "/v1/admin/diffs", headers=AUTH, timeout=30).json()["diffs"] == before


@pytest.mark.parametrize("header", [["format"], {"format": "csft-sparse-diff", "labels": 5}, "x", {"format": 1}])
def test_metadata_of_any_shape_is_refused_as_bad_metadata(header):
    from diffs_store import errors
    from diffs_store.metadata import DiffMetadata

    with pytest.raises(errors.DiffError) as info:
        DiffMetadata.from_header(header)
    assert info.value.code == errors.BAD_METADATA


def test_four_clients_looping_malformed_bodies(live, logs):
    """The issue's flood: four clients loop the malformed bodies for a few seconds while a
    normal client keeps asking. Every answer is a 4xx, the log grows by at most one short
    line per refusal and holds no traceback, and the normal client keeps being served."""
    import statistics
    import threading

    bodies = [body for body, _ in MALFORMED.values()]
    stop = threading.Event()
    codes: list[int] = []

    def flood() -> None:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                r = client.post("/v1/predict", content=bodies[i % len(bodies)], headers={"content-type": "application/json"})
                codes.append(r.status_code)
                i += 1

    def normal_latencies(seconds: float) -> list[float]:
        out = []
        with httpx.Client(base_url=live.url, timeout=30) as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.monotonic()
                assert client.post("/v1/predict", json=RESOLVED).status_code == 200
                out.append(time.monotonic() - t0)
        return out

    quiet = normal_latencies(2.0)
    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    loud = normal_latencies(5.0)
    stop.set()
    for t in threads:
        t.join(30)
    log_bytes = sum(len(rec.getMessage()) + 1 for rec in logs)
    figures = {"malformed_requests": len(codes), "statuses": sorted(set(codes)), "log_lines": len(logs),
               "log_bytes": log_bytes, "normal_p50_ms_quiet": round(statistics.median(quiet) * 1000, 1),
               "normal_p50_ms_flood": round(statistics.median(loud) * 1000, 1), "normal_requests_flood": len(loud)}
    print(json.dumps(figures))
    assert codes and all(400 <= c < 500 for c in codes), figures
    assert not [rec for rec in logs if rec.exc_info or rec.levelno >= logging.ERROR]
    assert len(logs) <= len(codes) and log_bytes <= 400 * len(codes), figures


def test_a_refusal_quoting_a_long_key_stays_one_short_line(live, logs):
    """A lone surrogate under a 100 KB key with newlines: the detail and the log line quote
    it bounded, escaped, on one line."""
    key = "k\n" * 50_000
    body = json.dumps({"task": "ner", "inputs": ["x"], key: "\ud800"}, ensure_ascii=True).encode()
    r = httpx.post(live.url + "/v1/predict", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail) <= 2000 and "\n" not in detail and detail.startswith("k\\nk\\n")
    assert all("\n" not in rec.getMessage() and len(rec.getMessage()) < 2200 for rec in logs)
