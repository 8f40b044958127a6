"""Uploaded images: an allow-list of formats, a cap on decoded bytes in flight, a shrink right after decoding.

An image is the one part of a request whose cost is not bounded by its size on the wire: a 78 KB
solid 4096 x 4096 PNG decodes to 64 MiB (Pillow keeps RGB as 4 bytes a pixel) and its RGB copy to
as much again.  So:

- only PNG, JPEG, WebP and GIF are decoded, and only as the format the data URL declares
  (`image/png` is opened as PNG and nothing else): Pillow knows dozens of formats (EPS runs
  Ghostscript) and none of them is needed to ask a question about a chart;
- the bytes the decoding will take (width x height x 8, read from the header) are reserved from one
  server-wide budget (`--max-image-bytes-in-flight`) before a pixel is decoded; a request that does
  not fit now gets 503 + Retry-After, one that could never fit gets 400; images over 1/32 of the
  budget may fill only 3/4 of it, so big images never refuse ordinary ones;
- right after decoding, the image is shrunk (aspect ratio kept) to the processor's own pixel budget
  (`max_pixels`; the processor would shrink it to that anyway), and the reservation shrinks with it:
  what waits in the queue is the small image, and it stays counted until the request is answered.
"""
from __future__ import annotations

import math
import threading

from PIL import Image

# declared MIME type -> the one Pillow format it is decoded as
ALLOWED_IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP",
                       "image/gif": "GIF"}
# decoding: the decoded image (Pillow stores RGB, RGBA and P-with-palette-expansion at <= 4 bytes a
# pixel) plus its RGB copy (`convert`), 4 + 4 bytes a pixel
DECODE_BYTES_PER_PIXEL = 8
KEPT_BYTES_PER_PIXEL = 4  # the RGB image that waits in the queue
SMALL_SHARE = 1 / 32  # an image needing at most this share of the budget is "small" (8 MiB of 256: ~1 Mpx)
BIG_SHARE = 3 / 4  # the share of the budget bigger images may fill


class ImageBudgetError(Exception):
    """The decoded-image budget cannot take this image: `status` 503 (not now) or 400 (never)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class ImageBudget:
    """Bytes of decoded images in flight, server-wide (thread-safe): reserved before decoding,
    lowered to the kept image's size after the shrink, released when the request is answered."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def ticket(self) -> ImageTicket:
        return ImageTicket(self)

    def _take(self, n: int) -> None:
        if n > self.max_bytes * BIG_SHARE:
            raise ImageBudgetError(400, f"the image needs ~{n} bytes decoded > {BIG_SHARE:g} of the limit of "
                                        f"{self.max_bytes} (--max-image-bytes-in-flight)")
        # a big image may fill the budget only up to BIG_SHARE: the rest is kept for ordinary images,
        # so clients sending 4096 x 4096 images cannot make everyone else's 503
        ceiling = self.max_bytes if n <= self.max_bytes * SMALL_SHARE else self.max_bytes * BIG_SHARE
        with self._lock:
            if self._used + n > ceiling:
                raise ImageBudgetError(503, "server busy decoding images: "
                                            f"{self._used} of {self.max_bytes} bytes in flight")
            self._used += n

    def _give(self, n: int) -> None:
        with self._lock:
            self._used -= n


class ImageTicket:
    """One request's share of the budget; `release()` (idempotent) gives all of it back."""

    def __init__(self, budget: ImageBudget):
        self.budget, self.held = budget, 0

    def reserve(self, n: int) -> None:
        self.budget._take(n)
        self.held += n

    def lower(self, old: int, new: int) -> None:
        """A reservation of `old` bytes now holds only `new` (<= old)."""
        freed = max(0, old - new)
        self.budget._give(freed)
        self.held -= freed

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self.budget._give(held)


def reuse_pixel_blocks(max_bytes: int) -> None:
    """Let Pillow keep up to `max_bytes` of freed pixel blocks for the next image (process-wide).

    Without this, each decoded image's blocks go back to malloc from whichever of the server's ~40
    pool threads decoded it, and glibc keeps a separate arena per thread: 80 decodes of 4096 x 4096,
    never more than two at once, left a process at 780 MB instead of 140.  The budget bounds the
    blocks in use at once, so a cache of the budget's size serves every decode from reused blocks.
    """
    block = Image.core.get_block_size()
    Image.core.set_blocks_max(max(Image.core.get_blocks_max(), math.ceil(max_bytes / block)))


def declared_format(media_type: str) -> str | None:
    """The Pillow format a data URL's MIME type allows, or None.

    >>> declared_format("image/PNG"), declared_format("image/jpg"), declared_format("image/bmp")
    ('PNG', 'JPEG', None)
    """
    return ALLOWED_IMAGE_TYPES.get(media_type.strip().lower())


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled by one factor so that their product is at most `max_pixels`.

    >>> fit_size(4096, 4096, 50176)  # sqrt(50176) = 224
    (224, 224)
    >>> fit_size(800, 200, 50176)  # 160,000 px: scale 0.56 -> 447.9 x 111.98, floored
    (447, 111)
    >>> fit_size(100, 50, 50176)
    (100, 50)
    """
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    for _ in range(4):  # float rounding can leave one row or column too many
        if w * h <= max_pixels:
            break
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


def shrink(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """The image at most `max_pixels` (aspect ratio kept; bicubic, as the Qwen2-VL processor resamples)."""
    if not max_pixels or image.width * image.height <= max_pixels:
        return image
    return image.resize(fit_size(image.width, image.height, max_pixels), Image.Resampling.BICUBIC,
                        reducing_gap=3.0)


def processor_max_pixels(processor) -> int | None:
    """The pixel budget a (Qwen2-VL style) processor resizes every image to: `max_pixels`, or
    `size.longest_edge` (how recent transformers versions spell it); None if it has none."""
    ip = getattr(processor, "image_processor", None)
    size = getattr(ip, "size", None)  # a dict, or transformers' SizeDict

    def read(obj, key):
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    value = read(ip, "max_pixels") or read(size, "max_pixels") or read(size, "longest_edge")
    return int(value) if value else None
