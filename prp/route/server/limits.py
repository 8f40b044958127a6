"""Every limit the servers enforce, with a safe default and a command-line flag each.

A request over a limit gets a 4xx for that request only; nothing else in its batch is touched.
Defaults are what an operator of a public endpoint would pick for the models PRP serves: small
enough that one client cannot take the machine, large enough for any real chart or document page.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
from dataclasses import dataclass

from prp.core.cli import positive_float, positive_int
from prp.core.data import ImageLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 16 * 1024 * 1024  # 413 above (checked from Content-Length, then while reading)
    max_images: int = 1  # per request (the router routes one image per query)
    max_image_pixels: int = 4096 * 4096  # width x height, read from the image header before decoding
    max_aspect_ratio: float = 200.0  # long side / short side (the Qwen2-VL processor raises above 200)
    max_prompt_tokens: int | None = None  # None: the model's positions minus the generation budget
    max_tokens: int = 1024  # cap on a request's max_tokens (a larger one is lowered to it); also the default
    max_queue: int = 256  # requests waiting for the model; 503 when full
    request_timeout_s: float = 300.0  # queue + work for one request; 504 after
    body_timeout_s: float = 30.0  # to receive the whole body; 408 after
    header_timeout_s: float = 10.0  # to receive the request line and headers; the connection is closed
    first_byte_timeout_s: float = 2.0  # a new connection that sends nothing for this long is closed
    keep_alive_s: float = 5.0  # idle keep-alive connections are closed after this
    limit_concurrency: int = 512  # requests being served (not sockets; /health exempt); 503 above
    backlog: int = 2048  # the listen queue (the stdlib server's 5 reset parallel clients)
    # decoded images in flight (decoding, then the shrunk images until answered); 503 above.
    # None: image_bytes_budget()'s default
    max_image_bytes_in_flight: int | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides localhost / 127.0.0.1 / [::1] (loopback binds)

    def image_bytes_budget(self) -> int:
        """`max_image_bytes_in_flight`, by default 256 MiB (one full-size 4096 x 4096 decode at once, or
        ~40 of 1024 x 768) or, if more, what one request of `max_images` full-size images needs (each
        kept at 4 bytes a pixel, plus one decode's 8) within the 3/4 big images may fill: a request
        must always fit when alone.

        >>> ServeLimits().image_bytes_budget() // 2**20, ServeLimits(max_images=4).image_bytes_budget() // 2**20
        (256, 426)
        """
        if self.max_image_bytes_in_flight is not None:
            return self.max_image_bytes_in_flight
        return max(256 * 1024 * 1024, -(-self.max_image_pixels * (4 * self.max_images + 4) * 4 // 3))  # ceil

    def image_limits(self) -> ImageLimits:
        # the encoded image can never be larger than the body that carried it (base64: 4/3)
        return ImageLimits(max_pixels=self.max_image_pixels, max_aspect_ratio=self.max_aspect_ratio,
                           max_file_bytes=self.max_body_bytes)


def add_limit_arguments(ap: argparse.ArgumentParser, *, max_images: int = 1) -> None:
    """The limit flags (shared by `route.py --serve` and `python -m prp.serve`)."""
    d = ServeLimits(max_images=max_images)
    g = ap.add_argument_group("serving limits (a request over one gets a 4xx of its own)")
    g.add_argument("--max-body-bytes", type=positive_int, default=d.max_body_bytes, help="request body size (413)")
    g.add_argument("--max-images", type=positive_int, default=d.max_images, help="images per request (400)")
    g.add_argument("--max-image-pixels", type=positive_int, default=d.max_image_pixels,
                   help="width x height, from the header before decoding (400)")
    g.add_argument("--max-aspect-ratio", type=positive_float, default=d.max_aspect_ratio,
                   help="long side / short side of an image (400; the Qwen processor's own limit is 200)")
    g.add_argument("--max-prompt-tokens", type=positive_int, default=None,
                   help="prompt tokens, text and image (400; default: the model's positions minus the "
                        "generation budget); route.py batch files too (an error row)")
    g.add_argument("--max-queue", type=positive_int, default=d.max_queue, help="requests waiting for the model (503)")
    g.add_argument("--request-timeout", type=positive_float, default=d.request_timeout_s,
                   help="seconds a request may wait for its answer, queue included (504)")
    g.add_argument("--body-timeout", type=positive_float, default=d.body_timeout_s,
                   help="seconds to send the body (408)")
    g.add_argument("--header-timeout", type=positive_float, default=d.header_timeout_s,
                   help="seconds to send the request line and headers (connection closed)")
    g.add_argument("--first-byte-timeout", type=positive_float, default=d.first_byte_timeout_s,
                   help="seconds a new connection may stay silent (connection closed)")
    g.add_argument("--keep-alive", type=positive_float, default=d.keep_alive_s, help="idle keep-alive seconds")
    g.add_argument("--limit-concurrency", type=positive_int, default=d.limit_concurrency,
                   help="requests being served, not open sockets (503 above; /health is always answered)")
    g.add_argument("--backlog", type=positive_int, default=d.backlog, help="listen backlog")
    g.add_argument("--max-image-bytes-in-flight", type=positive_int, default=None,
                   help="bytes of decoded images in flight, server-wide (503 above; default 256 MiB, or what one "
                        "request of --max-images full-size images needs if more)")
    g.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host name to accept besides localhost, 127.0.0.1 and [::1] when bound to loopback "
                        "(repeatable; the DNS-rebinding guard)")


def limits_from_args(args, *, max_tokens: int) -> ServeLimits:
    return ServeLimits(
        max_body_bytes=args.max_body_bytes, max_images=args.max_images, max_image_pixels=args.max_image_pixels,
        max_aspect_ratio=args.max_aspect_ratio, max_prompt_tokens=args.max_prompt_tokens, max_tokens=max_tokens,
        max_queue=args.max_queue, request_timeout_s=args.request_timeout, body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout, first_byte_timeout_s=args.first_byte_timeout,
        keep_alive_s=args.keep_alive, limit_concurrency=args.limit_concurrency, backlog=args.backlog,
        max_image_bytes_in_flight=args.max_image_bytes_in_flight,
        allowed_hosts=tuple(name.lower() for name in args.allow_host),
    )


def is_loopback(host: str) -> bool:
    """
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False
