"""Tiny local Qwen2.5-VL: tokenizer, processor, config, save/load round-trips, generation."""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import AutoModelForImageTextToText

from prp.core.modeling import (
    ImageOnlyQwen2_5_VLProcessor,
    load_model,
    load_processor,
    pick_attn_implementation,
    prepare_inputs,
)
from prp.core.prompts import build_messages
from prp.toy.tiny import (
    CHAT_TEMPLATE,
    SPECS,
    background_rgb,
    build_processor,
    build_tiny_model,
    build_tokenizer,
    count_parameters,
    digit_token_ids,
    freeze_vision_biases,
    main,
    mrope_section,
    save_tiny_model,
    save_tiny_pair,
    tiny_config,
)

QUESTION = "What is the sum of the numbers in the image?"






@pytest.fixture(scope="module")
def processor(tok):
    return build_processor(tokenizer=tok)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("pair"), seed=0, sizes=("draft",))["draft"]


def _digit_image(processor, digits: str = "35") -> Image.Image:
    # Background = the processor's mean colour; one digit per 28x28 merged-patch block.
    img = Image.new("RGB", (112, 112), background_rgb(processor))
    draw = ImageDraw.Draw(img)
    for i, d in enumerate(digits):
        draw.text((28 * i + 6, 2), d, fill=(0, 0, 0), font=ImageFont.load_default(size=22))
    return img


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_is_deterministic(tok):
    again = build_tokenizer()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert 300 <= len(tok) <= 1100


def test_digits_are_single_tokens(tok):
    ids = digit_token_ids(tok)
    assert len(set(ids)) == 10
    assert tok.convert_ids_to_tokens(ids) == list("0123456789")
    # Every digit of a rating stays its own token, also right after a tag.
    pieces = tok.convert_ids_to_tokens(tok.encode("<confidence>0.87</confidence>"))
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["0", "8", "7"]
    text = "<confidence>0.87</confidence><think> 3+5=8 </think><answer>$8$</answer>"
    assert tok.decode(tok.encode(text)) == text


def test_digit_token_ids_raises_on_multi_token_digit():
    class Merged:
        def encode(self, text, add_special_tokens=False):
            return [1, 2] if text == "7" else [3]

    with pytest.raises(ValueError, match="'7'"):
        digit_token_ids(Merged())


def test_special_tokens_and_prompts_are_compact(tok):
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert len(tok.encode(t)) == 1, t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok.encode(QUESTION)) <= 12
    from prp.core.prompts import P_DRAFT

    assert len(tok.encode(P_DRAFT)) < len(P_DRAFT) / 3


def test_chat_template_renders(tok):
    msgs = build_messages("How many?", mode="target")
    out = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Solve the question.")
    assert out.endswith("\nHow many?<|im_end|>\n<|im_start|>assistant\n")
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


# ---------------------------------------------------------------- processor


def test_processor_saves_and_reloads(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    again = load_processor(tmp_path)
    assert isinstance(again, ImageOnlyQwen2_5_VLProcessor)
    assert ImageOnlyQwen2_5_VLProcessor.from_pretrained(tmp_path).chat_template == CHAT_TEMPLATE
    assert again.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert again.image_processor.merge_size == 2 and again.image_processor.patch_size == 14


def test_prepare_inputs_mm_token_type_ids(processor):
    img = _digit_image(processor)
    msgs = [build_messages(QUESTION, mode="drl"), build_messages("How many?", mode="target")]
    batch = prepare_inputs(processor, msgs, [img, img])
    ids, mm = batch["input_ids"], batch["mm_token_type_ids"]
    assert set(batch) >= {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]  # 112x112 -> 8x8 patches
    assert mm.sum(1).tolist() == [16, 16]  # -> 16 merged image tokens each
    assert torch.equal(mm.bool(), ids == processor.image_token_id)
    # Left padding: the shorter conversation starts with pads, ends with the generation prompt.
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].tolist() == [1, 1]


# ---------------------------------------------------------------- config / model


@pytest.mark.parametrize("size", sorted(SPECS))
def test_config_rope(size, tok):
    cfg = tiny_config(size, tokenizer=tok)
    text = cfg.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert text.rope_parameters["rope_theta"] == 10.0
    assert cfg.vision_config.out_hidden_size == text.hidden_size
    assert text.vocab_size >= len(tok) and cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")


def test_mrope_section_matches_real_model():
    assert mrope_section(128) == [16, 24, 24]


def test_sizes_and_seed_determinism(tok):
    draft = build_tiny_model("draft", seed=0, tokenizer=tok)
    target = build_tiny_model("target", seed=0, tokenizer=tok)
    assert 0.6e6 < count_parameters(draft) < 0.9e6
    assert 3.2e6 < count_parameters(target) < 4.2e6
    a, b = build_tiny_model("test", seed=3, tokenizer=tok), build_tiny_model("test", seed=3, tokenizer=tok)
    c = build_tiny_model("test", seed=4, tokenizer=tok)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["lm_head.weight"], sc["lm_head.weight"])


def test_seed_determinism_across_threads(tok):
    """Two threads building at once (build_demo's lanes) get the weights of a build alone: the global
    RNG is one per process, so unguarded seeded inits interleave their draws."""
    import threading

    want = {seed: build_tiny_model("draft", seed=seed, tokenizer=tok).state_dict() for seed in (0, 1)}
    for _ in range(3):
        got: dict[int, dict] = {}
        threads = [threading.Thread(target=lambda s=seed, out=got: out.__setitem__(
            s, build_tiny_model("draft", seed=s, tokenizer=tok).state_dict())) for seed in (0, 1)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for seed in (0, 1):
            assert all(torch.equal(want[seed][k], got[seed][k]) for k in want[seed])


def test_freeze_vision_biases(tok):
    model = build_tiny_model("test", seed=0, tokenizer=tok)
    n = freeze_vision_biases(model)
    biases = [p for name, p in model.model.visual.named_parameters() if name.endswith("bias")]
    assert n == len(biases) > 0
    assert all(not p.requires_grad and not p.any() for p in biases)


def test_save_from_pretrained_identical_logits(tok, processor, tmp_path):
    save_tiny_model(tmp_path, size="test", seed=1, tokenizer=tok, processor=processor)
    model = build_tiny_model("test", seed=1, tokenizer=tok)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    batch = prepare_inputs(processor, [build_messages(QUESTION, mode="drl")], [_digit_image(processor)])
    with torch.no_grad():
        ref, got = model(**batch).logits, loaded(**batch).logits
        no_mm = loaded(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits
    assert torch.equal(ref, got)
    # The gotcha prepare_inputs guards against: without mm_token_type_ids, positions go 1-D.
    assert not torch.allclose(got, no_mm)


def test_reloaded_draft_generates(draft_dir):
    model, proc = load_model(draft_dir)
    assert model.config._attn_implementation == "sdpa" and pick_attn_implementation(None) == "sdpa"
    imgs = [_digit_image(proc, "35"), _digit_image(proc, "7")]
    msgs = [build_messages(QUESTION, mode="drl"), build_messages(QUESTION, mode="jrl")]
    batch = prepare_inputs(proc, msgs, imgs)
    prompt_len = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    assert out.shape[0] == 2 and prompt_len < out.shape[1] <= prompt_len + 16
    again = model.generate(**batch, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, again)
    texts = proc.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_cli_writes_loadable_dirs(tmp_path):
    main(["--out", str(tmp_path), "--seed", "2", "--sizes", "test"])
    files = {p.name for p in (tmp_path / "test").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    _model, proc = load_model(tmp_path / "test")
    assert isinstance(proc, ImageOnlyQwen2_5_VLProcessor)
