"""A procedural visual-reasoning benchmark: "What is the sum of the numbers in the image?"

Deterministic from a seed.  Layout follows docs/tiny-models.md, the recipe
under which tiny Qwen2.5-VL models actually read the image:
- a 112x112 image = a 4x4 grid of 28x28 blocks, one merged image token per block;
- number i sits on block row i, one digit per block (two-digit numbers take two blocks);
- the background is the image processor's mean colour (about 0 after normalisation).
Difficulty is the number of operands k (1..4) and their range: summing is what gets
harder for a small model, so k is the routing-relevant knob.

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


@dataclass
class SumItem:
    id: str
    numbers: list[int]
    level: int  # k, the number of operands
    split: str

    @property
    def answer(self) -> str:
        return f"${sum(self.numbers)}$"

    @property
    def reasoning(self) -> str:
        """A reference trace for SFT warm starts: '3+14+5=22'."""
        return "+".join(map(str, self.numbers)) + f"={sum(self.numbers)}"


def render(numbers: list[int], *, rng: random.Random | None = None) -> Image.Image:
    """Draw number i on block row i, one digit per 28x28 block, with +-2 px jitter."""
    if len(numbers) > GRID:
        raise ValueError(f"at most {GRID} numbers fit the grid")
    rng = rng or random.Random(0)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=rng.randint(22, 26))
    for row, number in enumerate(numbers):
        colour = tuple(rng.randint(0, 60) if rng.random() < 0.5 else rng.randint(200, 255) for _ in range(3))
        for col, digit in enumerate(str(number)):
            x = col * BLOCK + 7 + rng.randint(-2, 2)
            y = row * BLOCK - 6 + rng.randint(-2, 2)
            draw.text((x, y), digit, fill=colour, font=font)
    return image


def make_items(n: int, *, seed: int, split: str, levels=(1, 2, 3, 4), max_value: int = 99) -> list[SumItem]:
    """n items with k drawn uniformly from `levels` and numbers uniform in [0, max_value]."""
    rng = random.Random(f"{seed}-{split}")
    items = []
    for i in range(n):
        k = rng.choice(levels)
        numbers = [rng.randint(0, max_value) for _ in range(k)]
        items.append(SumItem(id=f"{split}-{i:05d}", numbers=numbers, level=k, split=split))
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
            render(item.numbers, rng=random.Random(f"{seed}-{item.id}")).save(image_path)
            record = {
                "id": item.id,
                "image": str(image_path.relative_to(out_dir)),
                "question": QUESTION,
                "answer": item.answer,
                "reasoning": item.reasoning,
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
