"""The HTTP layer of the servers against a REAL server process (`python -m prp.serve --canned`, no
model): parallel clients, the API key, request smuggling, body and header limits and timeouts."""
from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_fixtures import chat_body, get, host_header, host_port, post, raw_exchange, start, stop

KEY = "sk-test-serve-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    proc, url = start(["-m", "prp.serve", "--canned", "hello", "--port", "0", "--api-key-env", "PRP_TEST_SERVE_KEY",
                       "--max-body-bytes", "100000", "--header-timeout", "0.5", "--body-timeout", "0.5"],
                      {"PRP_TEST_SERVE_KEY": KEY})
    yield url
    stop(proc)


def test_64_parallel_clients_no_errors(server):
    def one(i):
        return post(server, chat_body(f"question {i}"), headers=AUTH, timeout=30)[0]

    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(one, range(192)))  # 64 clients x 3 requests, bounded
    assert statuses == [200] * 192


def test_api_key_required_on_v1_only(server):
    assert post(server, chat_body("hi"))[0] == 401
    status, body, _ = post(server, chat_body("hi"), headers={"Authorization": "Bearer wrong"})
    assert status == 401 and body["error"]["type"] == "invalid_request_error" and KEY not in json.dumps(body)
    assert get(server, "/v1/models")[0] == 401
    status, models = get(server, "/v1/models", headers=AUTH)
    assert status == 200 and models["data"][0]["id"] == "canned"
    status, health = get(server, "/health")  # probes need no key
    assert status == 200 and health["status"] == "ok"
    status, body, _ = post(server, chat_body("hi"), headers=AUTH)
    assert status == 200 and body["choices"][0]["message"]["content"] == "hello"


def _responses(raw: bytes) -> int:
    return raw.count(b"HTTP/1.1 ")


def test_unread_bodies_are_never_parsed_as_requests(server):
    host, _ = host_port(server)
    smuggled = f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    # a GET with a body: the body is the body, not the next request
    got = raw_exchange(server, b"GET /health HTTP/1.1\r\n" + host_header(server) + b"Content-Length: "
                       + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
    assert _responses(got) == 1 and b'"status"' in got and b'"data"' not in got
    # an unknown path with a body
    got = raw_exchange(server, b"POST /nope HTTP/1.1\r\n" + host_header(server) + b"Content-Length: "
                       + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
    assert _responses(got) == 1 and b" 404 " in got.split(b"\r\n")[0] + b" " and b'"data"' not in got
    # a chunked body
    chunk = f"{len(smuggled):x}\r\n".encode() + smuggled + b"\r\n0\r\n\r\n"
    got = raw_exchange(server, b"POST /nope HTTP/1.1\r\n" + host_header(server)
                       + b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
    assert _responses(got) == 1 and b'"data"' not in got


def test_transfer_encoding_with_content_length_is_refused_and_closed(server):
    """CL.TE desync: a proxy framing by Content-Length forwards "0\r\n\r\nGET ..." as this request's body; the
    server must not answer the GET hidden in it on the same connection."""
    host, _ = host_port(server)
    smuggled = f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    got = raw_exchange(server, b"POST /v1/chat/completions HTTP/1.1\r\n" + host_header(server)
                       + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
    assert _responses(got) == 1 and b" 400 " in got.split(b"\r\n")[0] + b" " and b'"data"' not in got
    assert b"connection: close" in got.lower()


def test_body_size_limit_413_and_the_connection_closes(server):
    status, body, headers = post(server, b"x" * 150_000, headers=AUTH)
    assert status == 413 and "100000" in body["error"]["message"]
    assert headers.get("connection", headers.get("Connection")) == "close"
    # no Content-Length (chunked): counted while reading
    big = b"y" * 150_000
    payload = (b"POST /v1/chat/completions HTTP/1.1\r\n" + host_header(server) + b"Content-Type: application/json\r\n"
               + b"Authorization: Bearer " + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(big):x}\r\n".encode() + big + b"\r\n0\r\n\r\n")
    got = raw_exchange(server, payload)
    assert got.startswith(b"HTTP/1.1 413")


def test_slow_headers_are_cut_off(server):
    host, port = host_port(server)
    with socket.create_connection((host, port), timeout=5) as s:
        t0 = time.monotonic()
        closed = False
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\n" + host_header(server):  # one byte every 0.2 s
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            s.settimeout(0.2)
            try:
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            if time.monotonic() - t0 > 6:
                break
        assert closed and time.monotonic() - t0 < 3  # --header-timeout 0.5


def test_slow_body_gets_408(server):
    got = raw_exchange(server, b"POST /v1/chat/completions HTTP/1.1\r\n" + host_header(server)
                       + b"Content-Type: application/json\r\nAuthorization: Bearer "
                       + KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"messages\":", wait_s=3)
    assert got.startswith(b"HTTP/1.1 408")


def test_a_body_nobody_reads_cannot_hold_the_connection(server):
    host, port = host_port(server)
    with socket.create_connection((host, port), timeout=6) as s:
        s.sendall(b"POST /nope HTTP/1.1\r\n" + host_header(server) + b"Content-Length: 100000\r\n\r\nabc")
        t0, got = time.monotonic(), b""
        while time.monotonic() - t0 < 5:
            try:
                s.sendall(b"x")  # trickle the rest of a body the server never reads
                s.settimeout(0.2)
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        assert got.startswith(b"HTTP/1.1 404") and time.monotonic() - t0 < 3  # closed after --header-timeout 0.5
