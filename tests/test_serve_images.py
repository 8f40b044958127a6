"""Uploaded images on the servers: only PNG / JPEG / WebP / GIF, as declared; shrunk to the
processor's budget right after decoding; decoded bytes in flight capped (issue 26, findings 1 and 7)."""
from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from serve_fixtures import post, start, stop

from prp.route.server.chat import RequestError, decode_data_url, parse_chat
from prp.route.server.limits import ServeLimits
from prp.route.server.schemas import ChatRequest

ROOT_DEMO_DRAFT = "demo/models/draft"


def encoded(fmt: str, size=(40, 30), mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 120).save(buf, format=fmt, **save)
    return buf.getvalue()


def url(raw: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(raw).decode()


def solid_png(size=(4096, 4096)) -> bytes:
    """A solid square PNG: ~78 KB on the wire for 4096 x 4096, 64 MiB once decoded."""
    return encoded("PNG", size=size)


# every format Pillow can write that the servers must refuse, whatever the URL declares
REFUSED = {"BMP": {}, "TGA": {}, "PPM": {}, "PCX": {}, "SGI": {}, "ICO": {}, "XBM": {"mode": "1"}, "IM": {},
           "DDS": {}, "SPIDER": {"mode": "F"}, "QOI": {}, "TIFF": {}, "EPS": {}}


@pytest.mark.parametrize("fmt", sorted(REFUSED))
def test_formats_outside_the_allow_list_are_never_decoded(fmt):
    opts = dict(REFUSED[fmt])
    raw = encoded(fmt, mode=opts.pop("mode", "RGB"), **opts)
    for declared in ("image/png", f"image/{fmt.lower()}", "image/jpeg"):
        with pytest.raises(RequestError) as exc:
            decode_data_url(url(raw, declared), ServeLimits(), "p")
        assert exc.value.status == 400 and "0x" not in exc.value.message, exc.value.message


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                                 ("JPEG", "image/jpg"), ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_allowed_formats_decode_only_as_declared(fmt, media_type):
    raw = encoded(fmt)
    assert decode_data_url(url(raw, media_type), ServeLimits(), "p").size == (40, 30)
    other = "image/gif" if fmt != "GIF" else "image/png"
    with pytest.raises(RequestError) as exc:  # the bytes are not what the URL says they are
        decode_data_url(url(raw, other), ServeLimits(), "p")
    assert exc.value.status == 400 and "not a readable image" in exc.value.message


def test_error_messages_carry_no_object_reprs():
    for raw in (b"\x89PNG\r\n\x1a\nnot really", b"garbage"):
        with pytest.raises(RequestError) as exc:
            decode_data_url(url(raw), ServeLimits(), "p")
        assert "0x" not in exc.value.message and "BytesIO" not in exc.value.message, exc.value.message
    with pytest.raises(RequestError) as exc:
        decode_data_url(url(encoded("BMP"), "image/bmp"), ServeLimits(), "p")
    assert "unsupported image type 'image/bmp'" in exc.value.message


def _request(*images: bytes) -> ChatRequest:
    content = [{"type": "image_url", "image_url": {"url": url(raw)}} for raw in images]
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": [*content,
                                                                                 {"type": "text", "text": "q"}]}]})


def test_images_are_shrunk_to_the_processor_budget_right_after_decoding():
    from prp.core.modeling import load_processor
    from prp.route.server.images import ImageBudget, processor_max_pixels

    max_pixels = processor_max_pixels(load_processor(ROOT_DEMO_DRAFT))
    assert max_pixels == 50176  # the demo processor's size.longest_edge (224 x 224)
    budget = ImageBudget(1 << 30)
    ticket = budget.ticket()
    limits = ServeLimits(max_images=2)
    parsed = parse_chat(_request(solid_png(), solid_png((800, 200))), limits, ticket=ticket, max_pixels=max_pixels)
    assert [im.size for im in parsed.images] == [(224, 224), (447, 111)]  # hand-computed: sqrt(50176/160000)
    # what stays in flight is the shrunk images, 4 bytes a pixel, until the request is answered
    assert budget.used == ticket.held == (224 * 224 + 447 * 111) * 4
    ticket.release()
    assert budget.used == 0
    small = parse_chat(_request(solid_png((100, 50))), limits, max_pixels=max_pixels)
    assert small.images[0].size == (100, 50)  # under the budget: untouched


def test_decoded_bytes_in_flight_are_capped():
    from prp.route.server.images import ImageBudget

    full = 4096 * 4096 * 8  # decoding a 4096 x 4096 image: 4 bytes a pixel, and its RGB copy
    budget = ImageBudget(full * 4 // 3 + 1000)  # big images may fill 3/4 of it: one full decode
    first = budget.ticket()
    parse_chat(_request(solid_png()), ServeLimits(), ticket=first)  # no shrink: kept at 4 bytes a pixel
    assert budget.used == 4096 * 4096 * 4
    with pytest.raises(RequestError) as exc:  # does not fit now: 503 (the client may retry)
        parse_chat(_request(solid_png()), ServeLimits(), ticket=budget.ticket())
    assert exc.value.status == 503 and "in flight" in exc.value.message
    small = budget.ticket()  # an ordinary image still fits: big ones may fill only 3/4 of the budget
    assert parse_chat(_request(solid_png((640, 480))), ServeLimits(), ticket=small).images[0].size == (640, 480)
    small.release()
    first.release()
    assert budget.used == 0
    with pytest.raises(RequestError) as exc:  # could never fit: 400 naming the flag
        parse_chat(_request(solid_png()), ServeLimits(), ticket=ImageBudget(full).ticket())
    assert exc.value.status == 400 and "--max-image-bytes-in-flight" in exc.value.message


def test_a_request_fits_alone_and_reserves_all_or_nothing():
    """Image by image, 8 clients of 4 full-size images each held part of the budget and refused one
    another on every retry; now a request reserves all its images at once or nothing."""
    from prp.route.server.images import ImageBudget

    limits = ServeLimits(max_images=4)
    budget = ImageBudget(limits.image_bytes_budget())
    first = budget.ticket()
    parse_chat(_request(*[solid_png()] * 4), limits, ticket=first)  # alone, it fits (kept at full size)
    assert budget.used == first.held == 4 * 4096 * 4096 * 4
    second = budget.ticket()
    with pytest.raises(RequestError) as exc:
        parse_chat(_request(*[solid_png()] * 4), limits, ticket=second)
    assert exc.value.status == 503 and second.held == 0 and budget.used == first.held
    first.release()
    assert budget.used == 0


def _peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_big_images_do_not_take_gigabytes():
    """8 clients x 4 solid 4096 x 4096 PNGs (78 KB each on the wire) took `prp.serve` from 0.4 to 3.4 GB;
    now the decoded bytes in flight are capped (426 MiB by default with --max-images 4) and refused requests
    leave no decoded image behind (measured: ~600 MiB of growth, budget and heap overhead)."""
    proc, server = start(["-m", "prp.serve", "--canned", "ok", "--port", "0", "--max-images", "4"])
    try:
        before = _peak_rss_bytes(proc.pid)
        body = {"messages": [{"role": "user", "content": [
            *[{"type": "image_url", "image_url": {"url": url(solid_png())}}] * 4, {"type": "text", "text": "q"}]}]}
        raw = json.dumps(body).encode()

        def one(_):
            for _ in range(40):  # a client that honours Retry-After, bounded
                status, _, _ = post(server, raw, timeout=120)
                if status != 503:
                    return status
                time.sleep(0.25)
            return status

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(8)))
        grown = _peak_rss_bytes(proc.pid) - before
        assert statuses.count(200) >= 1 and set(statuses) <= {200, 503}, statuses
        assert grown < 1024 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"  # the budget + heap overhead
    finally:
        stop(proc)
