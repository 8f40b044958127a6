"""Load a draft/target VLM (tiny local or real Qwen2.5-VL) and build its generation inputs."""
from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
)

from prp.core.adapters import (
    adapter_base,
    attach_adapter,
    check_adapter_dir,
    has_processor,
    is_adapter_dir,
    merge_adapter,
)
from prp.core.cli import UserError


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor.

    Without torchvision the stock class fails in `__init__` (it type-checks a video processor via
    `VIDEO_PROCESSOR_MAPPING`); images are all PRP needs, so the video processor is dropped.
    `ProcessorMixin` reads its sub-processors off this signature, so `video_processor` must not
    appear in it (else save/load and the class checks come back for it).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def load_processor(path: str | Path, *, trust_remote_code: bool = False) -> ProcessorMixin:
    """Processor for a tiny local dir or a real Qwen2.5-VL dir.

    `AutoProcessor` on our dirs silently returns just the tokenizer (the saved processor class is
    not registered), and on a real dir without torchvision it may raise on the video processor:
    in both cases fall back to the image-only subclass.
    """
    try:
        proc = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception:  # any failure here means "use the fallback"
        proc = None
    if isinstance(proc, ProcessorMixin) and getattr(proc, "image_processor", None) is not None:
        return proc
    return ImageOnlyQwen2_5_VLProcessor.from_pretrained(str(path))


def digit_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of "0".."9" in order (IPR reads these ten logits); raises if a digit is not one token."""
    ids = []
    for d in "0123456789":
        enc = tokenizer.encode(d, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"digit {d!r} is not a single token: {enc}")
        ids.append(enc[0])
    return ids


def freeze_vision_biases(model: torch.nn.Module) -> int:
    """Zero the vision tower's bias vectors and stop their gradients; returns how many.

    The tiny-model recipe (docs/tiny-models.md): tiny towers otherwise grow a large constant output
    that drowns the per-image signal.  `requires_grad` is not saved: call this again after loading.
    """
    n = 0
    for name, p in model.model.visual.named_parameters():
        if name.endswith("bias"):
            with torch.no_grad():
                p.zero_()
            p.requires_grad_(False)
            n += 1
    return n


def _flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def pick_attn_implementation(device: torch.device | str | None) -> str:
    """flash_attention_2 only where it can run (importable and CUDA); sdpa everywhere else.

    flash-attn is sdist-only and needs CUDA to build, so it is absent on CPU machines.
    """
    on_cuda = device is not None and torch.device(device).type == "cuda"
    return "flash_attention_2" if on_cuda and _flash_attn_available() else "sdpa"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name": resolved by from_pretrained


def model_positions(model) -> int | None:
    """The model's maximum positions (Qwen2.5-VL: text_config.max_position_embeddings)."""
    cfg = getattr(model, "config", None)
    for c in (getattr(cfg, "text_config", None), cfg):
        n = getattr(c, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_model_dir(path: str | Path) -> None:
    """A UserError naming the fix unless `path` is a model folder (config.json + *.safetensors) or a LoRA
    adapter folder (adapter_config.json + adapter_model.safetensors, prp.core.adapters).

    A path that does not exist and reads as a hub id ("Qwen/Qwen2.5-VL-7B-Instruct", its first part
    not a local folder) is left to from_pretrained.  A training output folder gets its latest
    checkpoint named in the message.
    """
    p = Path(path)
    fix = "give a folder saved by save_pretrained (config.json + *.safetensors), e.g. a train.py checkpoint"
    if is_adapter_dir(p):  # a LoRA adapter: its base is checked when it is loaded
        check_adapter_dir(p)
        return
    if not p.exists():
        if _HUB_ID.match(str(path)) and not Path(p.parts[0]).is_dir():
            return
        raise UserError(f"model folder {path} does not exist; {fix}")
    if not p.is_dir():
        raise UserError(f"{path} is a file, not a model folder; {fix}")
    if not (p / "config.json").is_file():
        ckpts = sorted((c for c in p.glob("ckpt-*") if c.name.removeprefix("ckpt-").isdigit()),
                       key=lambda c: int(c.name.removeprefix("ckpt-")))
        hint = f" (a training run: its latest checkpoint is {ckpts[-1]})" if ckpts else ""
        raise UserError(f"{path} is not a model folder: no config.json{hint}; {fix}")
    if not any(p.glob("*.safetensors")):
        raise UserError(f"{path} has config.json but no *.safetensors weights; {fix} (pickle weights are not loaded)")


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    base_model: str | Path | None = None,
    merge: bool = False,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """(model in eval mode, processor) from an HF dir.  safetensors only: no pickle loading.

    A LoRA adapter folder loads its base model (`base_model`, else the one its adapter_config.json names)
    with the adapter around its layers, not merged unless `merge` (prp.core.adapters); the processor is the
    adapter folder's when it has one (train.py saves it: sft-cn's added tokens), else the base's.
    """
    check_model_dir(path)
    if base_model and not is_adapter_dir(path):
        raise UserError(f"a base model ({base_model}) was given for {path}, which is a model folder, not a LoRA "
                        "adapter (adapter_config.json); drop --base-model")
    if is_adapter_dir(path):
        base = adapter_base(path, base_model)
        if is_adapter_dir(base):
            raise UserError(f"the base model of {path} is itself an adapter ({base}); export it first "
                            "(python -m prp.commands.export) and pass --base-model DIR")
        model, processor = load_model(base, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                      attn_implementation=attn_implementation)
        model = merge_adapter(model, path) if merge else attach_adapter(model, path).base_model.model
        if has_processor(path):
            processor = load_processor(path, trust_remote_code=trust_remote_code)
        return model.eval(), processor
    attn = attn_implementation or pick_attn_implementation(device)
    kwargs: dict = {"use_safetensors": True, "trust_remote_code": trust_remote_code, "attn_implementation": attn}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    if device is not None:
        model = model.to(device)
    processor = load_processor(path, trust_remote_code=trust_remote_code)
    return model.eval(), processor


def set_pixel_bounds(processor: ProcessorMixin, *, max_pixels: int, min_pixels: int | None = None) -> None:
    """Bound the image size the processor resizes to (paper C.2: max pixels 501760).

    `size` is where transformers 5 keeps the bounds (the min_pixels/max_pixels kwargs are deprecated).
    """
    ip = processor.image_processor
    size = {**dict(ip.size or {}), "longest_edge": max_pixels}
    if min_pixels is not None:
        size["shortest_edge"] = min(min_pixels, max_pixels)
    ip.size = size


ImagesArg = Sequence[Image.Image | Sequence[Image.Image] | None] | None


def _flatten_images(images: ImagesArg, n: int) -> list[Image.Image] | None:
    # The processor wants one flat list, in the order the <|image_pad|> slots appear.
    if images is None:
        return None
    if len(images) != n:
        raise ValueError(f"got {len(images)} image entries for {n} conversations")
    flat: list[Image.Image] = []
    for entry in images:
        if entry is None:
            continue
        flat.extend([entry] if isinstance(entry, Image.Image) else list(entry))
    return flat or None


def prepare_inputs(
    processor: ProcessorMixin,
    messages_batch: Sequence[list[dict]],
    images: ImagesArg = None,
    *,
    add_generation_prompt: bool = True,
    padding_side: str = "left",
    device: torch.device | str | None = None,
) -> BatchFeature:
    """Chat-template a batch of conversations and run the processor.

    `images[i]` is the image (or list of images, or None) of conversation i.  Returns:
      input_ids          [B, L]  left-padded by default (generation appends on the right)
      attention_mask     [B, L]
      mm_token_type_ids  [B, L]  0 text, 1 image token.  The model needs it: without it M-RoPE
                                 silently degrades to 1-D positions (no error, different logits)
      pixel_values       [sum_i h_i*w_i, 3*2*14*14]  flattened patches (only with images)
      image_grid_thw     [num_images, 3]
    """
    texts = [
        processor.apply_chat_template(list(m), tokenize=False, add_generation_prompt=add_generation_prompt)
        for m in messages_batch
    ]
    flat = _flatten_images(images, len(texts))
    batch = processor(
        text=texts,
        images=flat,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
        return_mm_token_type_ids=True,
    )
    if "mm_token_type_ids" not in batch:  # older processors: build it from the image token id
        batch["mm_token_type_ids"] = (batch["input_ids"] == processor.image_token_id).long()
    return batch.to(device) if device is not None else batch
