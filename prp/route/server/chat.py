"""A validated chat request -> what a model takes, with every per-request limit checked.

Raises `RequestError(status, message, param)` for the one request that breaks a limit; the
worker never sees it, so its batch neighbours are untouched.  Images are checked from their
header (size, aspect ratio) before a pixel is decoded (prp.core.data.decode_image_bytes), then
shrunk to the processor's pixel budget (prp.route.server.images).
"""
from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass

from PIL import Image

from prp.core.data import ImageError, decode_image_bytes
from prp.route.server.images import (
    ALLOWED_IMAGE_TYPES,
    DECODE_BYTES_PER_PIXEL,
    KEPT_BYTES_PER_PIXEL,
    ImageBudgetError,
    ImageTicket,
    declared_format,
    shrink,
)
from prp.route.server.limits import ServeLimits
from prp.route.server.schemas import ChatRequest


class RequestError(Exception):
    """A client error of one request: an HTTP status, a message safe to show, the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass
class ParsedChat:
    messages: list[dict]  # processor-style: [{"role", "content": [{"type": "text"|"image", ...}]}]
    images: list[Image.Image]  # in order of appearance
    question: str  # the text of the last user turn (what the router routes)
    max_tokens: int  # 1 <= max_tokens <= limits.max_tokens (a larger request is lowered to the cap)


@dataclass
class Upload:
    """An uploaded image whose header has been read and checked; no pixel decoded yet."""

    raw: bytes
    fmt: str  # the Pillow format its data URL declares (and the only one it is decoded as)
    size: tuple[int, int]
    param: str  # where it is in the request (for error messages)


class _HeaderRead(Exception):
    pass


def read_data_url(url: str, limits: ServeLimits, param: str) -> Upload:
    """A base64 data URL -> its bytes and size, checked from the header (pixels, aspect ratio).

    Remote URLs are refused: fetching them would let any client make this server open connections
    anywhere (and these machines have no internet).  Only PNG, JPEG, WebP and GIF, read as the
    format the URL declares (prp.route.server.images)."""
    head, sep, _ = url[:200].partition(",")
    if not url.startswith("data:") or not sep or not head.lower().endswith(";base64"):
        raise RequestError(400, "only base64 data URLs are accepted for images", param)
    media_type = head[len("data:"):].split(";", 1)[0]
    fmt = declared_format(media_type)
    if fmt is None:
        allowed = ", ".join(sorted(ALLOWED_IMAGE_TYPES))
        raise RequestError(400, f"unsupported image type {media_type[:40]!r} (allowed: {allowed})", param)
    try:
        raw = base64.b64decode(url[len(head) + 1:], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "the image is not valid base64", param) from None
    size: list[tuple[int, int]] = []

    def stop(image: Image.Image) -> None:  # the header passed the limits: stop before decoding
        size.append(image.size)
        raise _HeaderRead

    try:
        decode_image_bytes(raw, limits=limits.image_limits(), formats=(fmt,), on_header=stop)
    except _HeaderRead:
        pass
    except ImageError as exc:
        # the message names the reason and the size, never a path (uploads have none)
        raise RequestError(400, f"unusable image: {exc}", param) from None
    return Upload(raw=raw, fmt=fmt, size=size[0], param=param)


def decode_images(uploads: list[Upload], limits: ServeLimits, *, ticket: ImageTicket | None = None,
                  max_pixels: int | None = None) -> list[Image.Image]:
    """A request's images, decoded and each shrunk to `max_pixels` (the processor's budget; aspect kept).

    The bytes they take are reserved from `ticket` at once, before any is decoded (every image kept,
    plus the largest one's decoding): all or nothing.  Reserving image by image let 8 clients of 4
    images each hold part of the budget and refuse one another on every retry."""
    pixels = [w * h for w, h in (up.size for up in uploads)]
    need = (sum(p * KEPT_BYTES_PER_PIXEL for p in pixels)
            + max((p * (DECODE_BYTES_PER_PIXEL - KEPT_BYTES_PER_PIXEL) for p in pixels), default=0))
    if ticket is not None and need:
        try:
            ticket.reserve(need)
        except ImageBudgetError as exc:
            raise RequestError(exc.status, exc.message, uploads[0].param) from None
    images: list[Image.Image] = []
    with dropped_on_error(images):
        for up in uploads:
            try:
                image = decode_image_bytes(up.raw, limits=limits.image_limits(), formats=(up.fmt,))
            except ImageError as exc:
                raise RequestError(400, f"unusable image: {exc}", up.param) from None
            images.append(shrink(image, max_pixels))
            del image  # the full-size decode is freed before the next one starts
    if ticket is not None and need:  # what stays in flight is the shrunk images
        ticket.lower(need, sum(im.width * im.height * KEPT_BYTES_PER_PIXEL for im in images))
    return images


def decode_data_url(url: str, limits: ServeLimits, param: str, *, ticket: ImageTicket | None = None,
                    max_pixels: int | None = None) -> Image.Image:
    """One data URL -> RGB image (read_data_url, then decode_images)."""
    return decode_images([read_data_url(url, limits, param)], limits, ticket=ticket, max_pixels=max_pixels)[0]


@contextlib.contextmanager
def dropped_on_error(images: list[Image.Image]):
    """Empty `images` if the block raises.  A raised exception keeps its frames, and so their
    locals, alive, often in a reference cycle that only the cyclic GC frees; the GC runs by counts
    of Python objects and never sees the megabytes behind an image.  Refused requests piled up ~2 GB
    of decoded images that way (8 clients x 4 images of 4096 x 4096, with 503s) before this."""
    try:
        yield
    except BaseException:
        images.clear()
        raise


def parse_chat(req: ChatRequest, limits: ServeLimits, *, ticket: ImageTicket | None = None,
               max_pixels: int | None = None) -> ParsedChat:
    """`req` -> processor messages and images (each shrunk to `max_pixels`, its bytes held by `ticket`)."""
    n_images = sum(1 for m in req.messages if isinstance(m.content, list)
                   for p in m.content if p.type == "image_url")
    if n_images > limits.max_images:
        raise RequestError(400, f"{n_images} images in one request > the limit {limits.max_images}", "messages")
    # above the server's cap, max_tokens is lowered to it (as OpenAI-style servers do for their
    # context): clients and SDKs often send large defaults, and the cap already bounds the work
    wanted = req.requested_tokens()
    messages, uploads, question = [], [], ""
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            parts = [{"type": "text", "text": m.content}]
        else:
            parts = []
            for j, part in enumerate(m.content):
                if part.type == "text":
                    parts.append({"type": "text", "text": part.text})
                else:  # every image's header is checked before any image is decoded
                    uploads.append(read_data_url(part.image_url.url, limits, f"messages.{i}.content.{j}.image_url"))
                    parts.append({"type": "image"})
        messages.append({"role": m.role, "content": parts})
        if m.role == "user":
            question = "\n".join(p["text"] for p in parts if p["type"] == "text")
    images = decode_images(uploads, limits, ticket=ticket, max_pixels=max_pixels)
    return ParsedChat(messages=messages, images=images, question=question,
                      max_tokens=min(wanted or limits.max_tokens, limits.max_tokens))


def image_tokens(processor, image: Image.Image) -> int:
    """Tokens the Qwen2-VL processor gives `image`: its patches after resizing / merge_size**2
    (`get_number_of_image_patches` is the image processor's own count, the one vLLM uses)."""
    ip = processor.image_processor
    merge = int(getattr(ip, "merge_size", 2))
    return int(ip.get_number_of_image_patches(image.height, image.width)) // (merge * merge)


# a cheap gate before tokenizing: no tokenizer PRP serves packs more characters than this into
# one token on real text, so a longer prompt is over the limit without spending time on it
CHARS_PER_TOKEN_BOUND = 16
# what the chat template wraps around each message (Qwen: "<|im_start|>role\n ... <|im_end|>\n" is
# 5 tokens): counted per message, so many empty messages cannot slip a long prompt past the limit
TEMPLATE_TOKENS_PER_MESSAGE = 8


def check_prompt_tokens(parsed: ParsedChat, processor, limit: int, *, overhead: int = 64) -> int:
    """Prompt tokens (text + images + the template's tokens per message + a margin); RequestError 400
    over `limit`."""
    template = overhead + TEMPLATE_TOKENS_PER_MESSAGE * len(parsed.messages)
    if template > limit:
        raise RequestError(400, f"{len(parsed.messages)} messages are over the prompt limit of {limit} tokens",
                           "messages")
    text = "\n".join(p["text"] for m in parsed.messages for p in m["content"] if p["type"] == "text")
    if len(text) > limit * CHARS_PER_TOKEN_BOUND:
        raise RequestError(400, f"prompt of {len(text)} characters is over the limit of {limit} tokens", "messages")
    n = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) + template
    try:
        n += sum(image_tokens(processor, im) for im in parsed.images)
    except ValueError as exc:  # smart_resize's own checks (e.g. aspect ratio), should the limits allow it
        raise RequestError(400, f"unusable image: {exc}", "messages") from None
    if n > limit:
        raise RequestError(400, f"prompt of ~{n} tokens > the limit {limit}", "messages")
    return n


def default_prompt_limit(model, generation_budget: int) -> int:
    """Positions left for the prompt once the generation budget is reserved (at least 256)."""
    from prp.core.modeling import model_positions  # torch-heavy; the model is loaded by now

    positions = model_positions(model) or 32768
    return max(256, positions - generation_budget) if positions > generation_budget else max(256, positions // 2)
