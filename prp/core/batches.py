"""Model-side batches shared by training and evaluation: prompts chat-templated and padded for a
forward, a prompt + completion glued for teacher forcing, and the per-token log-probabilities of a
completion (GRPO's log pi(o_m | x, o_<m), Eq. 1-2 / Alg. 1 l.4-5; and P1's mean token probability,
Sec. 2.1 / 5.1).

Prompts are left-padded (generation continues at the right end); completions are right-padded after
them, with ``completion_mask`` marking real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from prp.core.modeling import prepare_inputs


def _model_inputs(batch: PromptBatch | TrainBatch) -> dict:
    """The forward's keyword arguments; the image ones only when the batch has images."""
    out = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "mm_token_type_ids": batch.mm_token_type_ids,
    }
    if batch.pixel_values is not None:
        out.update(pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw)
    return out


@dataclass
class PromptBatch:
    """Prompts already repeated N times (row j = prompt j // N)."""

    input_ids: torch.Tensor  # [B*N, P] left-padded
    attention_mask: torch.Tensor  # [B*N, P]
    mm_token_type_ids: torch.Tensor  # [B*N, P] 0 text, 1 image token
    pixel_values: torch.Tensor | None  # [sum of patches, C*T*14*14]
    image_grid_thw: torch.Tensor | None  # [B*N, 3]

    @property
    def model_inputs(self) -> dict:
        return _model_inputs(self)


def build_prompts(
    processor,
    messages: list[list[dict]],
    images: list[Image.Image | None],
    *,
    repeat: int,
    device: torch.device | str = "cpu",
) -> PromptBatch:
    """Chat-template and process each prompt `repeat` times (the processor handles the image patches)."""
    msgs = [m for m in messages for _ in range(repeat)]
    imgs = [im for im in images for _ in range(repeat)]
    batch = prepare_inputs(processor, msgs, imgs, padding_side="left", device=device)
    return PromptBatch(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        pixel_values=batch.get("pixel_values"),
        image_grid_thw=batch.get("image_grid_thw"),
    )


@dataclass
class TrainBatch:
    """Prompt + completion, ready for the loss forward."""

    input_ids: torch.Tensor  # [B, P+L]
    attention_mask: torch.Tensor  # [B, P+L] prompt mask, then 1 on completion tokens, 0 on padding
    mm_token_type_ids: torch.Tensor  # [B, P+L] completion tokens are text (0)
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    prompt_len: int  # P
    completion_mask: torch.Tensor  # [B, L]

    @property
    def model_inputs(self) -> dict:
        return _model_inputs(self)


def build_batch(prompts: PromptBatch, completions: list[list[int]], *, pad_id: int) -> TrainBatch:
    """Right-pad the completions to L and glue them after the (left-padded) prompts."""
    rows = len(completions)
    length = max(1, max(len(c) for c in completions))
    ids = torch.full((rows, length), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, length), dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, : len(c)] = 1
    device = prompts.input_ids.device
    ids, mask = ids.to(device), mask.to(device)
    return TrainBatch(
        input_ids=torch.cat([prompts.input_ids, ids], dim=1),
        attention_mask=torch.cat([prompts.attention_mask, mask], dim=1),
        mm_token_type_ids=torch.cat([prompts.mm_token_type_ids, torch.zeros_like(ids)], dim=1),
        pixel_values=prompts.pixel_values,
        image_grid_thw=prompts.image_grid_thw,
        prompt_len=prompts.input_ids.shape[1],
        completion_mask=mask,
    )


def completion_logprobs(model, batch: TrainBatch, *, temperature: float = 1.0) -> torch.Tensor:
    """log pi(o_m | x, o_<m) of every completion token: [B, L] (padding positions are junk; mask them).

    Only the last L+1 positions' logits are materialised (`logits_to_keep`): the prompt's are never
    needed, and with a 150k vocabulary they dominate memory.  Logits are divided by the sampling
    temperature so the gradient is that of the distribution the completions were drawn from.
    """
    length = batch.completion_mask.shape[1]
    out = model(**batch.model_inputs, logits_to_keep=length + 1, use_cache=False)
    logits = out.logits[:, :-1].float() / temperature  # [B, L, V]: position t predicts token t+1
    targets = batch.input_ids[:, batch.prompt_len :]  # [B, L]
    # gather - logsumexp: the same as log_softmax(...).gather(...) without a second [B, L, V] tensor.
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
