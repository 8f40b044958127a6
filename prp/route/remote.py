"""An OpenAI-compatible chat-completions client for a remote target (vLLM, SGLang, hosted APIs).

Stdlib only (urllib).  Retries timeouts, 5xx / 429 answers and refused or dropped connections
with exponential backoff; anything else (a 4xx, a malformed body) fails at once.  After the last
try it raises `RemoteError`, and the router lets the draft answer (Sec. 4.2 keeps a query
answerable by the draft at every point: its prefix cache is still there).

The API key comes from an environment variable whose NAME is configured (default
OPENAI_API_KEY); the key itself is never logged or put into an error message.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from PIL import Image

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
    timeout_s: float = 60.0  # per attempt (connect + read)
    backoff_s: float = 0.5  # wait before retry i (1-based): backoff_s * 2**(i-1), capped
    max_backoff_s: float = 10.0


@dataclass
class RemoteAnswer:
    text: str
    model: str
    completion_tokens: int | None
    latency_s: float  # the successful attempt plus every failed attempt and backoff before it
    attempts: int


class OpenAIClient:
    """POST /v1/chat/completions with retries.  Thread-safe (no shared mutable state)."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 retry: RetryPolicy | None = None, max_tokens: int = 1024, temperature: float = 0.0):
        self.url = completions_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.retry = retry or RetryPolicy()
        self.max_tokens = max_tokens
        self.temperature = temperature

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post_once(self, body: bytes) -> dict:
        req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        with urllib.request.urlopen(req, timeout=self.retry.timeout_s) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def chat(self, messages: list[dict], *, max_tokens: int | None = None) -> RemoteAnswer:
        payload = {
            "model": self.model, "messages": messages, "temperature": self.temperature,
            "max_tokens": max_tokens or self.max_tokens,
        }
        body = json.dumps(payload).encode("utf-8")
        start = time.perf_counter()
        last = "no attempt made"
        for attempt in range(1, self.retry.tries + 1):
            try:
                data = self._post_once(body)
                text = data["choices"][0]["message"]["content"] or ""
                usage = data.get("usage") or {}
                return RemoteAnswer(
                    text=text, model=data.get("model", self.model),
                    completion_tokens=usage.get("completion_tokens"),
                    latency_s=time.perf_counter() - start, attempts=attempt,
                )
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code not in RETRY_STATUS:
                    raise RemoteError(f"{last} from {self.url} (not retried)") from None
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as exc:
                # refused / reset / dropped connections and timeouts: transient, retry
                reason = getattr(exc, "reason", exc)
                last = f"{type(reason).__name__}: {reason}"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise RemoteError(f"malformed response from {self.url}: {type(exc).__name__}") from None
            if attempt < self.retry.tries:
                wait = min(self.retry.max_backoff_s, self.retry.backoff_s * 2 ** (attempt - 1))
                log.warning("target attempt %d/%d failed (%s); retrying in %.2fs", attempt, self.retry.tries, last, wait)
                time.sleep(wait)
        raise RemoteError(f"{last} after {self.retry.tries} tries to {self.url}")
