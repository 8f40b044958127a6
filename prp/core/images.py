"""Image files and fields: the checks made before a pixel is decoded, and where a record's image path
may point.

`open_image` / `decode_image_bytes` refuse what would hang or explode (a FIFO, a directory, a file
or a header over `ImageLimits`, a decompression bomb) with an `ImageError` whose message starts with
its reason code; `resolve_image_path` turns a record's image field into the path to open, and with
`confine` keeps it under the data's image root (docs/routing.md).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image that is missing or cannot be decoded."""


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be before its pixels are decoded (checked from the header alone).

    `max_pixels`: width x height; decoded RGB costs 3 bytes a pixel, so a 259 KB PNG that claims
    13000 x 13000 would cost ~0.5 GB decoded (2.3 GB with the processor's copies).
    `max_aspect_ratio`: long side / short side; the Qwen2-VL processor's `smart_resize` raises
    above 200.  `max_file_bytes`: the encoded file.
    """

    max_pixels: int = 4096 * 4096
    max_aspect_ratio: float = 200.0
    max_file_bytes: int = 32 * 1024 * 1024


DEFAULT_IMAGE_LIMITS = ImageLimits()


def check_image_header(image: Image.Image, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> str | None:
    """The reason an opened (not yet decoded) image breaks `limits`, or None.

    >>> check_image_header(Image.new("RGB", (3000, 1)))
    'image_aspect_ratio: 3000x1 (long/short side 3000 > 200)'
    >>> check_image_header(Image.new("RGB", (20, 10))) is None
    True
    """
    width, height = image.size
    if width < 1 or height < 1:
        return f"image_size: {width}x{height}"
    if width * height > limits.max_pixels:
        return f"image_too_large: {width}x{height} = {width * height} pixels > {limits.max_pixels}"
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        return f"image_aspect_ratio: {width}x{height} (long/short side {ratio:g} > {limits.max_aspect_ratio:g})"
    return None


@contextlib.contextmanager
def _quiet_bomb_warning():
    """PIL warns about a huge image as it reads the header; the limits refuse it by name instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _decode(fp, label: str, limits: ImageLimits, *, formats: tuple[str, ...] | None = None,
            on_header: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Open (header only), check the limits, then decode to RGB.  PIL's own decompression-bomb
    guard stays on as a second line; its error is not an OSError, so it is named here.  `formats`:
    the only Pillow formats tried (None: all); `on_header(image)` runs after the checks, before decoding."""
    try:
        with _quiet_bomb_warning(), Image.open(fp, formats=formats) as image:
            problem = check_image_header(image, limits)
            if problem:
                raise ImageError(problem)
            if on_header is not None:
                on_header(image)
            return image.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image_too_large: {label}: {_without_reprs(exc)}") from exc
    except UnidentifiedImageError as exc:
        kinds = f" as {'/'.join(formats)}" if formats else ""
        raise ImageError(f"corrupt_image: {label}: not a readable image{kinds}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt_image: {label}: {_without_reprs(exc)}") from exc


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _without_reprs(exc: BaseException) -> str:
    """The message without object reprs (Pillow names an upload `<_io.BytesIO object at 0x7f...>`).

    >>> _without_reprs(OSError("cannot identify image file <_io.BytesIO object at 0x7f0a12>"))
    'cannot identify image file <data>'
    """
    return _REPR.sub("<data>", str(exc))


def _regular_file(path: Path, limits: ImageLimits) -> None:
    """Only a regular file of bounded size is opened: a FIFO would block the reader forever, and a
    directory or a device is never an image."""
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ImageError(f"missing_image: {path}") from exc
    except OSError as exc:
        raise ImageError(f"unreadable_image: {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"not_a_file: {path}")
    if info.st_size > limits.max_file_bytes:
        raise ImageError(f"image_file_too_large: {path}: {info.st_size} bytes > {limits.max_file_bytes}")


def open_image(path: str | Path, *, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Image.Image:
    """Open and fully decode an image as RGB; ImageError if it cannot be read or breaks `limits`.

    The message starts with the reason (missing_image, unreadable_image, not_a_file,
    image_file_too_large, image_too_large, image_aspect_ratio, image_size, corrupt_image)."""
    path = Path(path)
    _regular_file(path, limits)
    return _decode(path, str(path), limits)


def decode_image_bytes(raw: bytes, *, limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
                       formats: tuple[str, ...] | None = None,
                       on_header: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """`open_image` for bytes already in memory (an uploaded image); `formats` and `on_header` as in `_decode`."""
    if len(raw) > limits.max_file_bytes:
        raise ImageError(f"image_file_too_large: {len(raw)} bytes > {limits.max_file_bytes}")
    return _decode(io.BytesIO(raw), "uploaded image", limits, formats=formats, on_header=on_header)


def image_error_reason(exc: ImageError) -> str:
    """The reason code an ImageError's message starts with.

    >>> image_error_reason(ImageError("corrupt_image: a.png: truncated"))
    'corrupt_image'
    """
    return str(exc).split(":", 1)[0]


def _check_image(path: Path, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> str | None:
    """The skip reason for an unusable image, or None.  The size limits come from the header and
    `verify()` checks the file without decoding the pixels (loading stays cheap); a file that still
    fails to decode later is caught where the image is used."""
    try:
        _regular_file(path, limits)
        with _quiet_bomb_warning(), Image.open(path) as image:
            problem = check_image_header(image, limits)
            if problem:
                return image_error_reason(ImageError(problem))
            image.verify()
    except ImageError as exc:
        return image_error_reason(exc)
    except Image.DecompressionBombError:
        return "image_too_large"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return "corrupt_image"
    return None


# A path longer than Linux's PATH_MAX (4096) cannot be opened; one path component is at most 255 bytes.
MAX_IMAGE_PATH_CHARS = 4096
MAX_PATH_COMPONENT_BYTES = 255


def resolve_image_path(value, base_dir: str | Path, *, confine: bool = False) -> str | None:
    """A record's image field -> the path to open (None: no image).  ValueError "bad_image_field"
    for a value that is not a path, ImageError "bad_image_path" for a path that cannot be one.

    `confine` (batch routing, docs/routing.md): the path must stay under `base_dir` (the data file's
    folder or --image-root): absolute paths, `..` components and symlinks resolving outside are
    refused, all with the same message, decided before the file itself is opened, so the error row
    never tells the file's author whether (or what) something exists outside the root.  The path
    returned is then the resolved one (the file that was checked is the file that is opened).

    >>> resolve_image_path("a/b.png", "/data")
    '/data/a/b.png'
    >>> for bad in ("/etc/passwd", "../x.png", "a/../../x.png"):
    ...     try:
    ...         resolve_image_path(bad, "/data", confine=True)
    ...     except ImageError as exc:
    ...         print(exc)
    bad_image_path: outside the image root (absolute or .. paths need --allow-outside-image-paths)
    bad_image_path: outside the image root (absolute or .. paths need --allow-outside-image-paths)
    bad_image_path: outside the image root (absolute or .. paths need --allow-outside-image-paths)
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("bad_image_field: the image must be a path (a string)")
    if "\x00" in value:
        raise ImageError("bad_image_path: the path holds a NUL character")
    if len(value) > MAX_IMAGE_PATH_CHARS:
        raise ImageError(f"bad_image_path: {len(value)} characters > {MAX_IMAGE_PATH_CHARS}")
    rel = Path(value)
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_PATH_COMPONENT_BYTES for part in rel.parts):
        raise ImageError(f"bad_image_path: a path component longer than {MAX_PATH_COMPONENT_BYTES} bytes")
    path = rel if rel.is_absolute() else Path(base_dir) / rel
    if not confine:
        return str(path)
    outside = ImageError("bad_image_path: outside the image root "
                         "(absolute or .. paths need --allow-outside-image-paths)")
    if rel.is_absolute() or ".." in rel.parts:
        raise outside
    root = os.path.realpath(base_dir)
    real = os.path.realpath(path)  # follows every symlink; a missing file stays a plain path
    if os.path.commonpath([root, real]) != root:
        raise outside
    return real
