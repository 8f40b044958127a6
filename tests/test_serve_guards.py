"""The servers against hostile clients (issue 26, findings 2, 3, 4 (the server side) and 8): idle sockets,
huge message lists, answers holding NaN, cross-site requests and DNS rebinding.

Real `prp.serve --canned` processes on 127.0.0.1 (no model; they start in a second), and the app
driven in-process over ASGI where the event loop itself is under test."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time

import pytest
from serve_fixtures import chat_body, get, host_port, post, raw_exchange, start, stop

from prp.route.server.app import build_app
from prp.route.server.limits import ServeLimits
from prp.route.server.schemas import ChatRequest, completion_body
from prp.route.server.worker import Worker


@pytest.fixture(scope="module")
def server():
    proc, url = start(["-m", "prp.serve", "--canned", "hello", "--port", "0", "--limit-concurrency", "8",
                       "--header-timeout", "30"])
    yield url
    stop(proc)


def _request_bytes(url: str, path: str = "/v1/chat/completions", *, host: str | None = None,
                   content_type: str | None = "application/json", body: bytes | None = None) -> bytes:
    body = json.dumps(chat_body("hi")).encode() if body is None else body
    host = host or "{}:{}".format(*host_port(url))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + body


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


# ---------------------------------------------------------------- finding 2: idle sockets


def test_idle_sockets_never_take_requests_or_health_down(server):
    """More idle sockets than --limit-concurrency (8): uvicorn counted sockets, so /health and chat got 503."""
    host, port = host_port(server)
    idle = []
    try:
        for _ in range(20):  # bounded
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"P")  # one byte of a request line, then nothing (the header deadline is 30 s)
            idle.append(s)
        time.sleep(0.5)  # the server has accepted them all
        assert get(server, "/health")[0] == 200
        status, body, _ = post(server, chat_body("still served?"))
        assert status == 200 and body["choices"][0]["message"]["content"] == "hello"
    finally:
        for s in idle:
            s.close()


def test_a_silent_connection_is_closed_after_the_first_byte_timeout():
    proc, url = start(["-m", "prp.serve", "--canned", "x", "--port", "0", "--first-byte-timeout", "0.5",
                       "--header-timeout", "30"])
    try:
        host, port = host_port(url)
        with socket.create_connection((host, port), timeout=10) as silent, \
                socket.create_connection((host, port), timeout=10) as talking:
            talking.sendall(b"G")  # has started a request: the 30 s header deadline applies
            t0 = time.monotonic()
            assert silent.recv(1) == b""  # closed by the server
            assert time.monotonic() - t0 < 8
            talking.settimeout(1.0)
            with pytest.raises(TimeoutError):
                talking.recv(1)  # still open
    finally:
        stop(proc)


# ---------------------------------------------------------------- finding 3: shapes capped (off the loop: below)


def test_message_and_part_counts_are_capped(server):
    status, body, _ = post(server, {"messages": [{"role": "user", "content": ""}] * 2000})
    assert status == 422 and body["error"]["param"] == "messages" and "1024" in body["error"]["message"]
    parts = [{"type": "text", "text": "x"}] * 100
    status, body, _ = post(server, {"messages": [{"role": "user", "content": parts}]})
    assert status == 422 and body["error"]["param"] == "messages.0.content" and "64" in body["error"]["message"]
    assert post(server, {"messages": [{"role": "user", "content": ""}] * 1024})[0] == 200
    # far over the cap (200,000 messages, 6.6 MB): refused from a count of "role" tokens, before parsing
    status, body, _ = post(server, {"messages": [{"role": "user", "content": ""}] * 200_000})
    assert status == 422 and body["error"]["message"].startswith('200000 "role" fields: over the limit')
    tricky = chat_body('\"role\" ' * 20_000)  # escaped quotes inside a text never count
    assert post(server, tricky)[0] == 200


# ---------------------------------------------------------------- finding 8: cross-site requests, DNS rebinding


def test_host_must_name_this_loopback_server(server):
    _, port = host_port(server)
    for bad in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", f"localhost.:{port}"):
        got = raw_exchange(server, _request_bytes(server, host=bad))
        assert _status(got) == 400 and b"Host" in got and b"connection: close" in got.lower(), (bad, got[:200])
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        got = raw_exchange(server, _request_bytes(server, host=good), wait_s=5)
        assert _status(got) == 200, (good, got[:200])
    assert get(server, "/health", headers={"Host": "evil.example"})[0] == 400


def test_allow_host_adds_names():
    proc, url = start(["-m", "prp.serve", "--canned", "x", "--port", "0", "--allow-host", "My.Box"])
    try:
        _, port = host_port(url)
        assert _status(raw_exchange(url, _request_bytes(url, host=f"my.box:{port}"), wait_s=5)) == 200
        assert _status(raw_exchange(url, _request_bytes(url, host=f"other.box:{port}"))) == 400
    finally:
        stop(proc)


def test_posts_must_be_json(server):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        got = raw_exchange(server, _request_bytes(server, content_type=content_type))
        assert _status(got) == 415, (content_type, got[:200])
    got = raw_exchange(server, _request_bytes(server, content_type="application/json; charset=utf-8"), wait_s=5)
    assert _status(got) == 200


def test_no_redirect_copies_the_host(server):
    got = raw_exchange(server, _request_bytes(server, "/v1/chat/completions/"))
    assert _status(got) == 404 and b"location:" not in got.lower()


# ---------------------------------------------------------------- in-process: the event loop and strict JSON


class _Backend:
    name, batch_size = "fake", 4

    def __init__(self, body_of=None):
        self.body_of = body_of or (lambda item: completion_body("ok", model="fake"))

    def prepare(self, req, ticket=None):
        return req

    def process(self, items):
        return [self.body_of(item) for item in items]


async def _asgi(app, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request through the ASGI app: (status, headers, body).  The client never disconnects."""
    hdrs = {"host": "127.0.0.1:8000", "content-type": "application/json", "content-length": str(len(body)),
            **(headers or {})}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    sent, stay = [False], asyncio.Event()

    async def receive():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await stay.wait()  # connected until the answer is sent
        return {"type": "http.disconnect"}

    out = {"status": None, "headers": {}, "body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    with contextlib.suppress(Exception):  # Starlette re-raises after sending its plain-text 500
        await app(scope, receive, send)
    return out["status"], out["headers"], out["body"]


def test_validation_runs_off_the_event_loop(monkeypatch):
    """A request body under validation must not stop the loop: /health is answered meanwhile.  (200,000
    empty messages took ~3 s to reject on the loop itself; two such clients held /health up to 4.8 s.)"""
    health_answered = threading.Event()
    seen = {}
    original = ChatRequest.model_validate_json

    def slow_validate(raw, *args, **kwargs):  # stands in for a slow body: waits (bounded) for /health
        seen["health_meanwhile"] = health_answered.wait(10)
        return original(raw, *args, **kwargs)

    monkeypatch.setattr(ChatRequest, "model_validate_json", staticmethod(slow_validate))
    worker = Worker(_Backend().process, batch_size=4, window_s=0.0)
    app = build_app(_Backend(), worker, ServeLimits())

    async def main():
        chat = asyncio.ensure_future(_asgi(app, "POST", "/v1/chat/completions", json.dumps(chat_body("hi")).encode()))
        for _ in range(5):
            await asyncio.sleep(0)  # the chat request reaches its validation first
        status, _, _ = await _asgi(app, "GET", "/health")
        health_answered.set()
        return status, await chat

    health_status, (chat_status, _, _) = asyncio.run(asyncio.wait_for(main(), 30))
    assert seen["health_meanwhile"] is True and health_status == 200 and chat_status == 200


@pytest.mark.parametrize("stream", [False, True])
def test_answers_are_strict_json_even_when_a_value_is_nan(stream):
    """A NaN in an answer (a target's usage, say) was a plain-text 500, or `NaN` inside a 200 event stream."""
    backend = _Backend(lambda item: completion_body("ok", model="fake", completion_tokens=float("nan")))
    app = build_app(backend, Worker(backend.process, window_s=0.0), ServeLimits())
    body = json.dumps({**chat_body("hi"), "stream": stream}).encode()
    status, headers, raw = asyncio.run(asyncio.wait_for(_asgi(app, "POST", "/v1/chat/completions", body), 30))

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))

    for event in raw.decode().split("\n"):  # a stream that was sent must hold strict JSON only
        if event.startswith("data: {"):
            strict(event[len("data: "):])
    assert status == 500 and headers["content-type"] == "application/json", (status, raw[:200])
    assert strict(raw)["error"]["type"] == "server_error"
