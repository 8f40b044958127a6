"""A procedural visual-reasoning benchmark: "What is the sum of the numbers in the image?"

Deterministic from a seed.  Layout follows docs/tiny-models.md, the recipe
under which tiny Qwen2.5-VL models actually read the image:
- a 112x112 image = a 4x4 grid of 28x28 blocks, one merged image token per block;
- number i sits on block row i, one digit per block (two-digit numbers take two blocks);
- the background is the image processor's mean colour (about 0 after normalisation).
Difficulty is the level (LEVELS): levels 1-3 add one, two or three numbers of 0-99; level 4 is
level 3 with one number hidden under a box, which no model solves (the items JRL exists for:
routing them to the target spends a call and gains nothing); level 5 is one number drawn in the
draft's own style (mirrored digits on a dark band), a domain the demo target is never trained on
(scripts/build_demo.py leaves it out of the target's data): the items only the draft solves, the
capability mismatch JRL's t is for (Sec. 3.3).  Summing, not reading, is what gets harder for a
small model.

Each record carries two reference traces: `reasoning` writes the sum at once ("3+14+5=22"), the
draft's format; `reasoning_steps` reads the numbers, then adds column by column with the carry
("3+14+5:3+4+5=12,1+0+1+0=2"), the longer chain of thought the demo target writes (a costlier,
more reliable reasoner, as a large target model is).

Records use the generic JSONL schema the loaders read: id, image (path relative to the
JSONL file), question, answer ("$17$"), plus level / split fields.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BLOCK = 28  # one merged image token (patch 14 x merge 2)
GRID = 4  # 4 x 4 blocks -> 112 x 112 pixels, 16 image tokens
IMAGE_SIZE = BLOCK * GRID
# Qwen2-VL's image_mean (CLIP's), as 8-bit RGB: normalises to ~0.
BACKGROUND = (123, 117, 104)
QUESTION = "What is the sum of the numbers in the image?"


@dataclass(frozen=True)
class Level:
    """One difficulty level: `k` numbers of up to `digits` digits; `occluded`: one of them is hidden
    under a box, so the sum cannot be known (an item no model solves)."""

    k: int
    digits: int
    occluded: bool = False
    mirrored: bool = False  # the draft's style: mirrored digits, light on a dark band (render)


LEVELS: dict[int, Level] = {1: Level(1, 2), 2: Level(2, 2), 3: Level(3, 2), 4: Level(3, 2, occluded=True),
                            5: Level(1, 2, mirrored=True)}
# The demo's mix, meant for a draft near 45% (it reads levels 1 and 5, rarely adds) and a target well
# above it on levels 2-3 (it cannot read level 5); measured: draft 50.5%, target 70.2% (demo/README.md).
DEFAULT_WEIGHTS: dict[int, float] = {1: 0.3, 2: 0.25, 3: 0.15, 4: 0.15, 5: 0.15}


@dataclass
class SumItem:
    id: str
    numbers: list[int]
    level: int
    split: str
    occluded_row: int | None = None  # the number drawn under a box (level 4)
    digits: int = 2  # columns of the target's trace (numbers are padded with leading zeros)
    mirrored: bool = False  # drawn in the draft's style (level 5)

    @property
    def answer(self) -> str:
        return f"${sum(self.numbers)}$"

    @property
    def reasoning(self) -> str:
        """The draft's reference trace, the sum at once: '3+14+5=22'."""
        return "+".join(map(str, self.numbers)) + f"={sum(self.numbers)}"

    @property
    def reasoning_steps(self) -> str:
        """The target's reference trace: the numbers read, then column by column from the units, the
        carry first: [12, 34, 15] -> '12+34+15:2+4+5=11,1+1+3+1=6' (units 11: write 1, carry 1;
        tens 6: the sum is 61).

        One-digit additions are what a tiny model learns from few samples; a whole multi-digit sum
        at once is not (docs/tiny-models.md), so this trace buys accuracy with tokens."""
        width = max(self.digits, *(len(str(n)) for n in self.numbers))
        parts, carry = [], 0
        for col in range(width):
            terms = ([carry] if col else []) + [n // 10 ** col % 10 for n in self.numbers]
            parts.append("+".join(map(str, terms)) + f"={sum(terms)}")
            carry = sum(terms) // 10
        return "+".join(map(str, self.numbers)) + ":" + ",".join(parts)


def render(numbers: list[int], *, rng: random.Random | None = None, occluded_row: int | None = None,
           mirrored: bool = False) -> Image.Image:
    """Draw number i on block row i from the first column, one digit per 28x28 block, with +-2 px
    jitter; `occluded_row`: that row's blocks covered by a solid box; `mirrored`: each digit flipped
    left-right, light on a dark band across its row (level 5).  (Left-aligned: the layout the
    draft's reading was measured with, docs/tiny-models.md.)"""
    if len(numbers) > GRID or any(len(str(n)) > GRID for n in numbers):
        raise ValueError(f"at most {GRID} numbers of at most {GRID} digits fit the grid")
    rng = rng or random.Random(0)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=rng.randint(22, 26))
    for row, number in enumerate(numbers):
        if mirrored:
            band = rng.randint(15, 45)
            draw.rectangle([0, row * BLOCK, IMAGE_SIZE - 1, (row + 1) * BLOCK - 1], fill=(band,) * 3)
            colour = tuple(rng.randint(200, 255) for _ in range(3))
        else:
            colour = tuple(rng.randint(0, 60) if rng.random() < 0.5 else rng.randint(200, 255) for _ in range(3))
        for col, digit in enumerate(str(number)):
            x, y = 7 + rng.randint(-2, 2), -6 + rng.randint(-2, 2)  # within the digit's block
            if mirrored:  # the glyph drawn on its own tile, flipped, pasted into its block
                tile = Image.new("RGBA", (BLOCK, BLOCK), (0, 0, 0, 0))
                ImageDraw.Draw(tile).text((x, y), digit, fill=colour, font=font)
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                image.paste(tile, (col * BLOCK, row * BLOCK), tile)
            else:
                draw.text((col * BLOCK + x, row * BLOCK + y), digit, fill=colour, font=font)
    if occluded_row is not None:
        grey = rng.randint(150, 190)
        draw.rectangle([0, occluded_row * BLOCK, IMAGE_SIZE - 1, (occluded_row + 1) * BLOCK - 1], fill=(grey,) * 3)
    return image


def make_items(n: int, *, seed: int, split: str, levels=tuple(LEVELS), weights: dict[int, float] | None = None,
               ) -> list[SumItem]:
    """n items, the level drawn from `levels` (weights: DEFAULT_WEIGHTS restricted to them), each
    number uniform in [0, 10**digits - 1]; at an occluded level one number's row is covered."""
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown levels {sorted(unknown)}; expected some of {sorted(LEVELS)}")
    weights = weights or DEFAULT_WEIGHTS
    rng = random.Random(f"{seed}-{split}")
    items = []
    for i in range(n):
        level = rng.choices(levels, weights=[weights[x] for x in levels])[0]
        spec = LEVELS[level]
        numbers = [rng.randint(0, 10 ** spec.digits - 1) for _ in range(spec.k)]
        hidden = rng.randrange(spec.k) if spec.occluded else None
        items.append(SumItem(id=f"{split}-{i:05d}", numbers=numbers, level=level, split=split, occluded_row=hidden,
                             digits=spec.digits, mirrored=spec.mirrored))
    return items


def write_split(items: list[SumItem], out_dir: str | Path, *, seed: int) -> Path:
    """Write <out_dir>/<split>.jsonl and its PNG images; returns the JSONL path."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    split = items[0].split if items else "empty"
    path = out_dir / f"{split}.jsonl"
    with path.open("w") as f:
        for item in items:
            image_path = image_dir / f"{item.id}.png"
            rng = random.Random(f"{seed}-{item.id}")
            render(item.numbers, rng=rng, occluded_row=item.occluded_row, mirrored=item.mirrored).save(image_path)
            record = {
                "id": item.id,
                "image": str(image_path.relative_to(out_dir)),
                "question": QUESTION,
                "answer": item.answer,
                "reasoning": item.reasoning,
                "reasoning_steps": item.reasoning_steps,
                "level": item.level,
                "split": item.split,
                "meta": asdict(item),
            }
            f.write(json.dumps(record) + "\n")
    return path


def build_benchmark(out_dir: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None,
                    **kwargs) -> dict[str, Path]:
    """Train / validation / test splits as JSONL + images under out_dir."""
    sizes = sizes or {"train": 2000, "validation": 200, "test": 400}
    return {split: write_split(make_items(n, seed=seed, split=split, **kwargs), out_dir, seed=seed)
            for split, n in sizes.items()}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the synthetic sum-of-numbers benchmark.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=400)
    args = parser.parse_args()
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    paths = build_benchmark(args.out, seed=args.seed, sizes=sizes)
    for split, path in paths.items():
        print(f"{split}: {path}")
