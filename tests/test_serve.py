"""`route.py --serve` as a REAL subprocess with the tiny draft/target pair: one bad request never
harms the others of its batch, every limit is a 4xx naming the problem, max_tokens is honoured,
server-sent events, /v1/models and /health."""
from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_fixtures import bomb_png, chat_body, get, host_header, host_port, png_bytes, post, start, stop

from prp.toy.synthetic import render

pytestmark = pytest.mark.slow  # a router process with two models (~20 s to start on 2 busy cores)


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def router_server(pair):
    proc, url = start(["route.py", "--serve", "--port", "0", "--draft", str(pair["draft"]),
                       "--target", str(pair["target"]), "--mode", "jrl", "--rating", "forced", "--pt", "0.5",
                       "--max-new-tokens", "4", "--batch-size", "8", "--batch-window-ms", "400",
                       "--max-prompt-tokens", "400", "--max-body-bytes", "300000", "--threads", "1"])
    yield url
    stop(proc)


GOOD = _png(render([3, 4]))


def _parallel(url, bodies):
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: post(url, b, timeout=120), bodies))


def test_one_bad_image_never_harms_the_other_seven(router_server):
    for bad in (png_bytes(size=(3000, 1)), bomb_png(13000, 13000), b"\x89PNG\r\n\x1a\nnot really"):
        bodies = [chat_body("What is the sum of the numbers in the image?", GOOD) for _ in range(7)]
        bodies.insert(3, chat_body("What is the sum of the numbers in the image?", bad))
        results = _parallel(router_server, bodies)
        bad_status, bad_body, _ = results.pop(3)
        assert bad_status == 400 and "image" in bad_body["error"]["message"]
        assert [s for s, _, _ in results] == [200] * 7, [b for _, b, _ in results]
        for _, body, _ in results:
            assert body["prp"]["route"] in ("draft", "target")
            assert isinstance(body["choices"][0]["message"]["content"], str)
    # and the two messages the client needs: which limit, and the numbers
    _, body, _ = post(router_server, chat_body("q", png_bytes(size=(3000, 1))))
    assert "aspect" in body["error"]["message"] and "3000x1" in body["error"]["message"]
    _, body, _ = post(router_server, chat_body("q", bomb_png(13000, 13000)))
    assert "13000x13000" in body["error"]["message"] and "pixels" in body["error"]["message"]


def test_malformed_requests_get_a_4xx_naming_the_field(router_server):
    def status_of(body, **kw):
        status, out, _ = post(router_server, body, **kw)
        return status, out["error"]

    status, err = status_of({"messages": [{"role": "user"}]})
    assert status == 422 and err["param"] == "messages.0.content" and "required" in err["message"].lower()
    status, err = status_of({**chat_body("hi"), "max_tokens": "5"})
    assert status == 422 and err["param"] == "max_tokens"
    status, err = status_of({**chat_body("hi"), "max_tokens": 0})
    assert status == 422 and err["param"] == "max_tokens"
    status, out, _ = post(router_server, {**chat_body("hi"), "max_tokens": 100000})  # lowered to the cap (4)
    assert status == 200 and out["usage"]["completion_tokens"] <= out["prp"]["prefix_tokens"] + 4
    status, err = status_of({"messages": []})
    assert status == 422 and err["param"] == "messages"
    assert status_of(b'{"messages": [')[0] == 400
    assert status_of(b'{"messages": "\xff\xfe"}')[0] == 400  # not UTF-8
    status, err = status_of(b"x" * 400_000)
    assert status == 413
    two = chat_body("q", GOOD)
    two["messages"][0]["content"].insert(0, two["messages"][0]["content"][0])
    status, err = status_of(two)
    assert status == 400 and "images" in err["message"]
    status, err = status_of(chat_body("1 2 3 4 5 6 7 8 9 " * 300))  # ~5400 tokens > --max-prompt-tokens 400
    assert status == 400 and "400" in err["message"] and "token" in err["message"]
    status, err = status_of(chat_body("x" * 100_000))  # over the cheap character gate, never tokenized
    assert status == 400 and "characters" in err["message"]
    url_image = chat_body("q")
    url_image["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}})
    status, err = status_of(url_image)
    assert status == 400 and "data URL" in err["message"]


def test_max_tokens_is_honoured_by_the_router(router_server):
    bodies = [{**chat_body("What is the sum of the numbers in the image?", GOOD), "max_tokens": 1} for _ in range(4)]
    for status, body, _ in _parallel(router_server, bodies):
        assert status == 200
        meta, used = body["prp"], body["usage"]["completion_tokens"]
        if meta["answered_by"] == "draft":  # the rating prefix, then at most one token of answer
            assert used <= meta["prefix_tokens"] + 1
        else:
            assert used <= 1


def test_stream_sends_server_sent_events(router_server):
    host, port = host_port(router_server)
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**chat_body("What is 2+3?"), "stream": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    events = [line[len("data: "):] for line in resp.read().decode().split("\n") if line.startswith("data: ")]
    conn.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["prp"]["route"] in ("draft", "target")
    assert isinstance("".join(c["choices"][0]["delta"].get("content", "") for c in chunks), str)


def test_models_health_and_a_client_that_leaves(router_server):
    status, models = get(router_server, "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "prp-router"
    status, health = get(router_server, "/health")
    assert status == 200 and health["status"] == "ok"
    before = health["cancelled"]
    # a client that sends its request and leaves within the batch window: dropped before any work
    host, port = host_port(router_server)
    raw = json.dumps(chat_body("What is the sum?", GOOD)).encode()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n" + host_header(router_server)
                  + b"Content-Type: application/json\r\nContent-Length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw)
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and get(router_server, "/health")[1]["cancelled"] == before:
        time.sleep(0.2)
    assert get(router_server, "/health")[1]["cancelled"] == before + 1
