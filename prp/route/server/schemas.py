"""Pydantic models of the OpenAI chat-completions request, and the response bodies.

Unknown top-level fields (temperature, top_p, user, ...) are accepted and ignored, as OpenAI
clients send them; the fields PRP reads are typed strictly, so `"max_tokens": "5"` or a message
without `content` is a 422 that names the field (`messages.0.content`).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

# fixed caps on a request's shape (a 422 above): no chat PRP serves has more turns or parts than this,
# and every message and part costs work in each later step (template, tokenizer, prompt checks)
MAX_MESSAGES = 1024
MAX_CONTENT_PARTS = 64  # per message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ImageURL(_Strict):
    url: StrictStr
    detail: StrictStr | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]


class ChatRequest(_Strict):
    model: StrictStr | None = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)  # the newer OpenAI spelling
    stream: StrictBool = False

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic errors -> ("messages.0.content: Field required; ...", first field path).

    >>> validation_message([{"loc": ("messages", 0, "content"), "msg": "Field required"}])
    ('messages.0.content: Field required', 'messages.0.content')
    """
    parts, first = [], None
    for err in errors[:5]:
        loc = ".".join(_field_path(err.get("loc", ())))
        first = first or loc or None
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts), first


def _field_path(loc) -> list[str]:
    """A pydantic location without its union-branch labels ("str", "list[tagged-union[...]]") and
    without the discriminator's repeat ("image_url.image_url" -> "image_url")."""
    out: list[str] = []
    for x in map(str, loc):
        if x == "str" or "[" in x or (out and out[-1] == x):
            continue
        out.append(x)
    return out


def completion_body(text: str, *, model: str, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None, finish_reason: str = "stop",
                    extra: dict | None = None) -> dict:
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": (prompt_tokens or 0) + (completion_tokens or 0)},
    }
    if extra:
        body.update(extra)
    return body


def strict_json(value) -> str:
    """JSON as RFC 8259 defines it: NaN and infinities raise ValueError instead of becoming the
    `NaN` / `Infinity` tokens no JSON parser of a client has to accept.

    >>> strict_json({"a": 1.5})
    '{"a": 1.5}'
    >>> strict_json({"a": float("nan")})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Out of range float values are not JSON compliant...
    """
    return json.dumps(value, allow_nan=False)


def sse_events(body: dict) -> list[str]:
    """A finished completion as OpenAI's stream: a role delta, the content, the finish, [DONE].

    The answer is complete when the router decides (one batch), so the content is one delta; the
    `prp` metadata rides on the last chunk.
    """
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}
    choice = body["choices"][0]

    def chunk(delta: dict, finish: str | None, **more) -> str:
        return "data: " + strict_json({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                       **more}) + "\n\n"

    extra = {k: v for k, v in body.items() if k not in ("id", "object", "created", "model", "choices")}
    return [chunk({"role": "assistant", "content": ""}, None),
            chunk({"content": choice["message"]["content"]}, None),
            chunk({}, choice["finish_reason"], **extra),
            "data: [DONE]\n\n"]
