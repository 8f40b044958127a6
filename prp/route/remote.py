"""An OpenAI-compatible chat-completions client for a remote target or draft (vLLM, SGLang, hosted APIs).

Stdlib only (http.client).  Retries timeouts, 5xx / 408 / 429 answers and refused or dropped
connections with exponential backoff; anything else (a 4xx, a redirect, a malformed or oversized
body) fails at once.  After the last try it raises `RemoteError`, and the router lets the draft
answer (Sec. 4.2 keeps a query answerable by the draft at every point: its prefix cache is still
there).

Each attempt has ONE total deadline (`RetryPolicy.timeout_s`: connect, send, headers and body
together), enforced by a watchdog that shuts the socket down: a per-read socket timeout alone
would let a target that trickles one byte a second hold a query forever.  So a query is answered
(by the target or by the draft's fallback) within tries x timeout_s plus the backoff waits.

Redirects are never followed (the Authorization header must not travel to another host), the
response body is capped (`max_response_bytes`), and error messages never name the target URL
(router rows are shown to clients of `route.py --serve`).  The API key comes from an environment
variable whose NAME is configured (default OPENAI_API_KEY); it is never logged.
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import logging
import os
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

from PIL import Image

from prp.core.jsonl import JsonError, loads

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class RemoteError(RuntimeError):
    """The target could not answer after every try."""


def image_data_url(image: Image.Image, *, fmt: str = "PNG") -> str:
    """A PIL image as a base64 data URL (what OpenAI-style APIs take in `image_url`)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_messages(prompt_text: str, image: Image.Image | None) -> list[dict]:
    """One user turn in OpenAI's format: the image (as a data URL) first, then the text."""
    content: list[dict] = []
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image_data_url(image)}})
    content.append({"type": "text", "text": prompt_text})
    return [{"role": "user", "content": content}]


def completions_url(base_url: str) -> str:
    """http://h:p -> http://h:p/v1/chat/completions; .../v1 -> .../v1/chat/completions; full URL kept."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


@dataclass
class RetryPolicy:
    tries: int = 4  # attempts in all
    timeout_s: float = 60.0  # total per attempt: connect + send + headers + body
    backoff_s: float = 0.5  # wait before retry i (1-based): backoff_s * 2**(i-1), capped
    max_backoff_s: float = 10.0

    def worst_case_s(self) -> float:
        """The longest `OpenAIClient.chat` can take before it answers or raises.

        >>> RetryPolicy().worst_case_s()  # 4 x 60 s + waits of 0.5, 1 and 2 s
        243.5
        >>> RetryPolicy(tries=6, timeout_s=1, backoff_s=4).worst_case_s()  # waits 4, 8, 10, 10, 10 (capped)
        48.0
        """
        waits = sum(min(self.max_backoff_s, self.backoff_s * 2 ** i) for i in range(self.tries - 1))
        return self.tries * self.timeout_s + waits


@dataclass
class RemoteAnswer:
    text: str
    model: str
    completion_tokens: int | None
    latency_s: float  # the successful attempt plus every failed attempt and backoff before it
    attempts: int


class _Retry(Exception):
    """A transient failure of one attempt (the message is safe to show: no URL, no key)."""


class _Fatal(Exception):
    """A failure that another attempt would repeat."""


MAX_MODEL_NAME = 200  # characters of the target's `model` kept (it is shown to clients)


def load_strict_json(raw: bytes):
    """A response body as JSON, strictly (prp.core.jsonl.loads with strict numbers): not UTF-8, not
    JSON, NaN / Infinity / 1e999, or nested too deep raise `_Fatal` (the router then lets the draft answer).

    >>> load_strict_json(b'{"a": [1, 2.5]}')
    {'a': [1, 2.5]}
    >>> for body in (b'{"a": NaN}', b'[1e999]', b'[' * 100_000):
    ...     try:
    ...         load_strict_json(body)
    ...     except _Fatal as exc:
    ...         print(exc)
    malformed response: bad_json
    malformed response: bad_json
    malformed response: json_too_deep
    """
    try:
        return loads(raw, strict_numbers=True)
    except JsonError as exc:
        raise _Fatal(f"malformed response: {exc.reason}") from None


def parse_answer(data, default_model: str) -> tuple[str, str, int | None]:
    """A target's chat completion -> (text, model, completion_tokens), every value type-checked.

    A value of the wrong type raises `_Fatal` (the draft answers).  `model` falls back to
    `default_model` when it is not a string; `completion_tokens` must be a non-negative integer or absent.

    >>> parse_answer({"choices": [{"message": {"content": "42"}}], "usage": {"completion_tokens": 1}}, "m")
    ('42', 'm', 1)
    >>> try:
    ...     parse_answer({"choices": [{"message": {"content": "4"}}], "usage": {"completion_tokens": "7"}}, "m")
    ... except _Fatal as exc:
    ...     print(exc)
    malformed response: usage.completion_tokens is not a non-negative integer
    """
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if text is None and isinstance(message, dict) and "content" in message:
        text = ""  # a null content is an empty answer
    if not isinstance(text, str):
        raise _Fatal("malformed response: no choices[0].message.content string")
    model = data.get("model")
    model = model[:MAX_MODEL_NAME] if isinstance(model, str) and model else default_model
    usage = data.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if usage is not None and not isinstance(usage, dict):
        raise _Fatal("malformed response: usage is not an object")
    if tokens is not None and (type(tokens) is not int or tokens < 0):
        raise _Fatal("malformed response: usage.completion_tokens is not a non-negative integer")
    return text, model, tokens


class OpenAIClient:
    """POST /v1/chat/completions with retries.  Thread-safe (no shared mutable state)."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 retry: RetryPolicy | None = None, max_tokens: int = 1024, temperature: float = 0.0,
                 max_response_bytes: int = 8 * 1024 * 1024, role: str = "target"):
        self.url = completions_url(base_url)
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the {role} must be an http(s) URL")
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.model = model
        self.api_key_env = api_key_env
        self.retry = retry or RetryPolicy()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_response_bytes = max_response_bytes
        self.role = role  # "target" or "draft": names the endpoint in errors and logs (never its URL)

    def _headers(self, length: int) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Content-Length": str(length),
                   "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _post_once(self, body: bytes):
        """One attempt under one total deadline: the response's strict JSON; raises _Retry / _Fatal."""
        deadline = time.monotonic() + self.retry.timeout_s
        conn = self._connection(self.retry.timeout_s)
        expired = threading.Event()

        def cut() -> None:  # the watchdog: unblocks whatever read or write is in progress
            expired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.retry.timeout_s, cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("POST", self._path, body=body, headers=self._headers(len(body)))
            resp = conn.getresponse()
            if 300 <= resp.status < 400:
                raise _Fatal(f"HTTP {resp.status} redirect (not followed)")
            if resp.status != 200:
                if resp.status in RETRY_STATUS:
                    raise _Retry(f"HTTP {resp.status}")
                raise _Fatal(f"HTTP {resp.status} (not retried)")
            declared = resp.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
                raise _Fatal(f"response of {declared} bytes > {self.max_response_bytes}")
            chunks, size = [], 0
            while True:
                if conn.sock is not None:  # each read also waits at most what is left
                    conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise _Fatal(f"response larger than {self.max_response_bytes} bytes")
                chunks.append(chunk)
            if expired.is_set():
                raise _Retry(f"TimeoutError: no complete answer within {self.retry.timeout_s:g}s")
            if resp.length:  # the connection closed before the promised Content-Length
                raise _Retry("IncompleteRead: the connection closed mid-answer")
            return load_strict_json(b"".join(chunks))
        except (_Retry, _Fatal):
            raise
        except (http.client.HTTPException, OSError) as exc:  # refused, reset, dropped, timed out
            if expired.is_set() or isinstance(exc, TimeoutError):
                raise _Retry(f"TimeoutError: no complete answer within {self.retry.timeout_s:g}s") from None
            raise _Retry(f"{type(exc).__name__}: {exc.strerror or exc}" if isinstance(exc, OSError)
                         else type(exc).__name__) from None
        finally:
            watchdog.cancel()
            conn.close()

    def chat(self, messages: list[dict], *, max_tokens: int | None = None) -> RemoteAnswer:
        limit = min(max_tokens, self.max_tokens) if max_tokens else self.max_tokens
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": limit}
        (text, model, tokens), attempts, latency = self.post(payload, parse=lambda d: parse_answer(d, self.model))
        return RemoteAnswer(text=text, model=model, completion_tokens=tokens, latency_s=latency, attempts=attempts)

    def post(self, payload: dict, *, parse=None) -> tuple:
        """POST `payload` with the retry policy: (`parse(response JSON)`, or the JSON itself without
        `parse`, attempts, seconds in all, retries and waits included).  `parse` reads the body's shape:
        a `_Fatal`, KeyError, IndexError, TypeError or AttributeError there is a malformed response
        (RemoteError at once)."""
        body = json.dumps(payload).encode("utf-8")
        start = time.perf_counter()
        last = "no attempt made"
        for attempt in range(1, self.retry.tries + 1):
            try:
                data = self._post_once(body)
                return (data if parse is None else parse(data)), attempt, time.perf_counter() - start
            except _Retry as exc:
                last = str(exc)
            except _Fatal as exc:
                log.warning("%s %s: %s", self.role, self.url, exc)
                raise RemoteError(f"{self.role}: {exc}") from None
            except (KeyError, IndexError, TypeError, AttributeError) as exc:
                raise RemoteError(f"{self.role}: malformed response ({type(exc).__name__})") from None
            if attempt < self.retry.tries:
                wait = min(self.retry.max_backoff_s, self.retry.backoff_s * 2 ** (attempt - 1))
                log.warning("%s attempt %d/%d failed (%s); retrying in %.2fs",
                            self.role, attempt, self.retry.tries, last, wait)
                time.sleep(wait)
        log.warning("%s %s failed after %d tries: %s", self.role, self.url, self.retry.tries, last)
        raise RemoteError(f"{self.role}: {last} after {self.retry.tries} tries")
