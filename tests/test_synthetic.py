"""The demo benchmark (prp.toy.synthetic): levels, the two reference traces, the image layout."""
from __future__ import annotations

import collections
import random

import numpy as np
import pytest

from prp.toy.synthetic import BACKGROUND, BLOCK, GRID, LEVELS, SumItem, build_benchmark, make_items, render


@pytest.mark.parametrize(("numbers", "steps"), [
    ([12, 34, 15], "12+34+15:2+4+5=11,1+1+3+1=6"),  # units 11 (write 1, carry 1), tens 1+1+3+1 = 6: 61
    ([99, 99], "99+99:9+9=18,1+9+9=19"),  # 198: the last column's sum is written whole
    ([7], "7:7=7,0+0=0"),  # one number, padded to two columns
    ([5, 40], "5+40:5+0=5,0+0+4=4"),  # carry 0 is still written
])
def test_column_trace_by_hand(numbers, steps):
    item = SumItem("x", numbers, level=len(numbers), split="t")
    assert item.reasoning_steps == steps
    assert item.reasoning == "+".join(map(str, numbers)) + f"={sum(numbers)}"


def test_column_trace_always_adds_up():
    rng = random.Random(0)
    for _ in range(500):
        numbers = [rng.randint(0, 99) for _ in range(rng.randint(1, 3))]
        cols = SumItem("x", numbers, level=1, split="t").reasoning_steps.split(":")[1].split(",")
        sums = [int(c.split("=")[1]) for c in cols]
        assert all(sum(map(int, c.split("=")[0].split("+"))) == v for c, v in zip(cols, sums, strict=True))
        assert int(str(sums[-1]) + str(sums[0] % 10)) == sum(numbers)  # the tens sum, then the units digit


def test_level_mix_and_ranges():
    items = make_items(4000, seed=0, split="test")
    share = collections.Counter(i.level for i in items)
    assert set(share) == set(LEVELS)
    assert abs(share[1] / 4000 - 0.3) < 0.03 and abs(share[4] / 4000 - 0.15) < 0.03
    assert abs(share[5] / 4000 - 0.15) < 0.03
    for item in items:
        spec = LEVELS[item.level]
        assert len(item.numbers) == spec.k and all(0 <= n <= 99 for n in item.numbers)
        assert (item.occluded_row is not None) == spec.occluded and item.mirrored == spec.mirrored
    assert {lv for lv, spec in LEVELS.items() if spec.mirrored} == {5}
    assert make_items(50, seed=0, split="test") == items[:50]  # deterministic from the seed
    with pytest.raises(ValueError, match="unknown levels"):
        make_items(3, seed=0, split="x", levels=(1, 9))


def _block(image, row, col):
    a = np.asarray(image, dtype=np.int16)
    return a[row * BLOCK:(row + 1) * BLOCK, col * BLOCK:(col + 1) * BLOCK]


def test_numbers_start_in_the_first_column_and_the_occluded_row_is_covered():
    image = render([7, 45, 3], occluded_row=1)
    assert render([7, 45], rng=random.Random(1)).tobytes() == render([7, 45], rng=random.Random(1)).tobytes()
    ink = [[bool((np.abs(_block(image, r, c) - BACKGROUND).sum(-1) > 60).any()) for c in range(GRID)]
           for r in range(GRID)]
    assert ink[0] == [True, False, False, False]  # "7": one block, the first
    assert ink[2] == [True, False, False, False]
    assert all(ink[1])  # the box spans the row
    assert len({tuple(p) for p in _block(image, 1, 1).reshape(-1, 3)}) == 1  # one solid colour: nothing readable
    assert not any(ink[3])


def _ink_columns(block, light: bool):
    """Mean column of the glyph's ink in the upper and the lower half of a block."""
    a = block.astype(float).mean(-1)
    ink = a > 180 if light else np.abs(block - BACKGROUND).sum(-1) > 60
    rows, cols = np.nonzero(ink)
    mid = (rows.min() + rows.max()) / 2
    return cols[rows < mid].mean(), cols[rows > mid].mean()


def test_level_5_draws_mirrored_digits_on_a_dark_band():
    """A 7's stem runs from the top right to the bottom left; mirrored, from the top left to the
    bottom right.  The number's row is one dark band; the other rows stay background."""
    normal, mirrored = render([7], rng=random.Random(2)), render([7], rng=random.Random(2), mirrored=True)
    top, bottom = _ink_columns(_block(normal, 0, 0), light=False)
    assert bottom < top - 2
    top, bottom = _ink_columns(_block(mirrored, 0, 0), light=True)
    assert bottom > top + 2
    band = _block(mirrored, 0, 2)
    assert len({tuple(p) for p in band.reshape(-1, 3)}) == 1 and band.max() <= 45  # dark, no ink
    assert all((_block(mirrored, r, c) == BACKGROUND).all() for r in (1, 2, 3) for c in range(GRID))


def test_records_carry_both_traces(tmp_path):
    import json

    path = build_benchmark(tmp_path, seed=3, sizes={"test": 20})["test"]
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert all(r["reasoning_steps"].startswith(r["reasoning"].split("=")[0] + ":") for r in rows)
    assert all((tmp_path / r["image"]).exists() for r in rows)
