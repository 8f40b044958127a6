"""Tiny real-architecture Qwen2.5-VL draft/target pairs, built offline.

No hub access exists here (tests, CI, the CPU demo), so the tokenizer, processor and weights are
all built locally and deterministically.  The architecture is the real `Qwen2_5_VLForConditionalGeneration`
so every code path (M-RoPE, chat template, processor, `generate`) is the one real checkpoints take.

    python -m prp.toy.tiny --out runs/tiny --seed 0 --sizes draft,target
"""
from __future__ import annotations

import argparse
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from prp.core.modeling import ImageOnlyQwen2_5_VLProcessor, digit_token_ids, freeze_vision_biases
from prp.core.prompts import PROMPTS

# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

# Qwen's specials, in Qwen's order, appended after the BPE vocabulary (as in the real vocab).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
DIGITS = tuple("0123456789")
# Upper bound on the BPE part (incl. the 256 byte symbols); the built-in corpus runs out of
# pairs seen twice at ~650, which is plenty.  Specials come on top.
DEFAULT_VOCAB_SIZE = 1024

# The real Qwen2.5-VL template, minus its default system turn ("You are a helpful assistant."):
# a system turn is rendered only when the messages contain one, which keeps tiny prompts short.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> Iterator[str]:
    """A fixed, enumerated corpus (no randomness: the vocabulary must not depend on a seed).

    Prompts are repeated so their words win merges and a Table-4 prompt costs ~150 tokens, not ~700.
    """
    for _ in range(8):
        yield from PROMPTS.values()
    tags = ("confidence", "target", "think", "answer")
    for _ in range(8):
        yield "".join(f"<{t}></{t}>" for t in tags)
        yield "".join(f"<{t}> </{t}>" for t in tags)
        yield "system\nYou are a helpful assistant.\nuser\nassistant\n"
    questions = (
        "What is the sum of the numbers in the image?",
        "What is the product of the numbers in the image?",
        "What is the difference between the two numbers?",
        "What is the largest number in the image?",
        "What is the smallest number in the image?",
        "Which number is the largest?",
        "Which option is correct?",
        "Which of the following is true?",
        "How many numbers are in the image?",
        "How many objects are there in the picture?",
        "How much is the total?",
        "Answer with the option's letter from the given choices directly.",
        "Choices: (A) 1 (B) 2 (C) 3 (D) 4 (E) 5",
        "Find the value of x. Give the final answer.",
        "Please reason step by step, and put your final answer within $\\boxed{}$.",
        (
            "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
            "at the end."
        ),
    )
    for _ in range(4):
        yield from questions
    latex = (
        "$\\frac{1}{2}$ $\\frac{a}{b}$ $\\sqrt{2}$ $x^2$ $3\\times4=12$ $2\\cdot3=6$ $\\pi$ "
        "$\\boxed{10}$ $\\angle ABC = 90^\\circ$ $\\le$ $\\ge$ $\\neq$ $\\left( \\right)$ "
        "$\\text{cm}$ $x = 5$ $y = -3$ $a + b = c$ $\\%$"
    )
    for _ in range(3):
        yield latex
    # Completions in the paper's format, over small numbers (digits are always single tokens:
    # Qwen's regex isolates every \p{N}, so only the separators around them get merged).
    for a, b in itertools.product(range(10), repeat=2):
        c = a + b
        yield (
            f"<target>0.{a}{b}</target><confidence>0.{b}{a}</confidence>"
            f"<think> Since ${a}+{b}={c}$, so the answer is {c} .</think><answer>${c}$</answer>"
        )
        yield f"<confidence>0.{a}{b}</confidence><think>{a}+{b}={c}</think><answer>${c}$</answer>"
        yield f"{a} + {b} = {c}, {a} - {b} = {a - b}, {a} * {b} = {a * b}. The answer is ({'ABCDE'[a % 5]})."


def build_tokenizer(*, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen2's pre-tokenizer, wrapped as a real `Qwen2Tokenizer`.

    Deterministic: the corpus is enumerated, and the BPE trainer breaks ties deterministically.
    """
    # Train with exactly the pipeline `Qwen2Tokenizer` rebuilds from (vocab, merges), so the
    # merges learned here are the merges applied later.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(state["vocab"])
    # tokenizers 0.23 serialises merges as [a, b] pairs; Qwen2Tokenizer wants tuples
    # (strings "a b" fail with `failed to extract enum PyMerges`).
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=32768,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    digit_token_ids(tokenizer)  # fail early if a digit is not one token
    return tokenizer


# --------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------

PATCH_SIZE = 14
MERGE_SIZE = 2
# 112x112 -> 8x8 patches -> 4x4 = 16 merged image tokens.  The pixel bounds keep other image
# sizes in 4..64 tokens; 28-aligned images are not resized at all.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 224 * 224


def build_image_processor(*, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    from transformers import Qwen2VLImageProcessor  # resolves to the Pil variant without torchvision

    return Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE, temporal_patch_size=2,
    )


def build_processor(
    *, tokenizer: PreTrainedTokenizerBase | None = None, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> ImageOnlyQwen2_5_VLProcessor:
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    return ImageOnlyQwen2_5_VLProcessor(
        image_processor=build_image_processor(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def background_rgb(processor: ProcessorMixin) -> tuple[int, int, int]:
    """The processor's mean colour as RGB: it normalises to ~0, which helps tiny towers (see notes)."""
    mean = processor.image_processor.image_mean
    return tuple(round(255 * m) for m in mean)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinySpec:
    """Shape of one tiny model (text decoder + vision tower)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_ffn: int


SPECS: dict[str, TinySpec] = {
    # ~0.74 M parameters with the ~1k vocab (tied embeddings).
    "draft": TinySpec(96, 4, 4, 2, 256, 64, 2, 4, 128),
    # ~3.7 M.
    "target": TinySpec(192, 6, 6, 2, 512, 128, 4, 4, 256),
    # Smallest sensible: unit tests.
    "test": TinySpec(64, 2, 4, 2, 128, 32, 2, 2, 64),
}

# Text RoPE base.  With the default 1e6 and head_dim ~24 the M-RoPE height/width angles differ by
# 1e-2..3e-6 rad per position: the LM cannot tell image tokens apart.  10 makes them distinct.
TINY_ROPE_THETA = 10.0


def mrope_section(head_dim: int) -> list[int]:
    """[t, h, w] summing to head_dim/2, in the real model's 16:24:24 proportion."""
    half = head_dim // 2
    hw = (half * 3) // 8
    return [half - 2 * hw, hw, hw]


def _pad_vocab(n: int, multiple: int = 64) -> int:
    # Like the real checkpoints (151665 tokens, 152064 rows): some never-used rows, which also
    # keeps IPR honest about softmax over the full vocabulary.
    return -(-n // multiple) * multiple


def tiny_config(
    size: str = "draft", *, vocab_size: int | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
    **overrides,
) -> Qwen2_5_VLConfig:
    """A `Qwen2_5_VLConfig` for one of SPECS.  `overrides` go to the text config, or to the
    vision config when prefixed `vision_` (e.g. `vision_depth=3`), or to the top level when they
    are top-level fields (e.g. `tie_word_embeddings`)."""
    try:
        spec = SPECS[size]
    except KeyError:
        raise ValueError(f"unknown tiny size {size!r}; expected one of {sorted(SPECS)}") from None
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    tid = tokenizer.convert_tokens_to_ids
    if vocab_size is None:
        vocab_size = _pad_vocab(len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {len(tokenizer)}")
    head_dim = spec.hidden // spec.heads
    text = {
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.ffn,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": TINY_ROPE_THETA,
            "mrope_section": mrope_section(head_dim),
        },
        "bos_token_id": tid(PAD_TOKEN),
        "eos_token_id": tid(EOS_TOKEN),
        "pad_token_id": tid(PAD_TOKEN),
        "use_sliding_window": False,
    }
    vision = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_ffn,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": 2,
        "window_size": 112,  # 4x4 merged tokens per window: a 112x112 image is one window
        "fullatt_block_indexes": [spec.vision_depth - 1],
    }
    top = {
        "image_token_id": tid("<|image_pad|>"),
        "video_token_id": tid("<|video_pad|>"),
        "vision_start_token_id": tid("<|vision_start|>"),
        "vision_end_token_id": tid("<|vision_end|>"),
        "tie_word_embeddings": True,
    }
    for k, v in overrides.items():
        if k in top:
            top[k] = v
        elif k.startswith("vision_"):
            vision[k.removeprefix("vision_")] = v
        else:
            text[k] = v
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)


_SEEDED_INIT = threading.Lock()  # build_tiny_model: one seeded init at a time per process


def build_tiny_model(
    size: str = "draft", *, seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None,
    freeze_biases: bool = False, **overrides,
) -> Qwen2_5_VLForConditionalGeneration:
    """Random-init tiny model; same (size, seed, tokenizer, overrides) -> same weights, also when
    several threads build models at once (scripts/build_demo.py's two lanes)."""
    config = tiny_config(size, tokenizer=tokenizer, **overrides)
    # fork_rng: seed the init without disturbing the caller's global RNG stream.  The lock: that stream is
    # one per process, so two threads seeding and drawing at once interleave their draws (measured: the
    # demo's two lanes built different draft weights from the same seed in two builds).
    with _SEEDED_INIT, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id, config.text_config.pad_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    if freeze_biases:
        freeze_vision_biases(model)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    # named unique params: tied embeddings count once.
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_tiny_model(
    out_dir: str | Path, *, size: str = "draft", seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None,
    processor: ProcessorMixin | None = None,
) -> Path:
    """Write one full HF dir (config, safetensors, generation config, tokenizer, processor)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    processor = processor if processor is not None else build_processor(tokenizer=tokenizer)
    model = build_tiny_model(size, seed=seed, tokenizer=tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)  # also writes the tokenizer and chat template
    return out


def save_tiny_pair(
    out_dir: str | Path, *, seed: int = 0, sizes: tuple[str, ...] = ("draft", "target")
) -> dict[str, Path]:
    """`out_dir/<size>` for each size, all sharing one tokenizer and processor."""
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer=tokenizer)
    return {
        size: save_tiny_model(Path(out_dir) / size, size=size, seed=seed, tokenizer=tokenizer,
                              processor=processor)
        for size in sizes
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder; one sub-folder per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="draft,target", help=f"comma-separated, from {sorted(SPECS)}")
    args = ap.parse_args(argv)
    sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip())
    for size, path in save_tiny_pair(args.out, seed=args.seed, sizes=sizes).items():
        print(f"{size}: {path}")


if __name__ == "__main__":
    main()
