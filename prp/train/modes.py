"""The training modes as data: which prompt, which rating segments, which micro-step, which objective.

One table instead of string comparisons spread over the trainer: adding a mode is one row here
(plus a micro-step function in `prp.train.step` if it needs a new kind).  Pure data, no torch: the
config module imports it to validate mode names.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class StepKind(str, Enum):
    RL = "rl"  # sample N, reward, group advantages (+ DSS), policy gradient (Alg. 1 / Alg. 2)
    SFT = "sft"  # supervised warm start on reference traces
    SFT_CN = "sft-cn"  # Paradigm-2 baseline: N labelled answers per question ([CN]/[UN]), cross-entropy
    PRESAMPLE = "presample"  # no training: the target's Acc_tgt cache (Alg. 2 l.1-7)


class Objective(str, Enum):
    PG = "pg"  # Eq. 2 / 7 / 8: -sum(w * logp) with the per-token advantage map w
    CE = "ce"  # supervised: -sum(w * logp) / sum(w), w a 0/1 mask


@dataclass(frozen=True)
class Mode:
    name: str
    step: StepKind
    prompt: str | None  # prp.core.prompts kind the draft is prompted with: target (P) | drl (P_draft) | jrl (P_joint)
    ratings: tuple[str, ...] = ()  # rating segments that get their own advantage: "d" (Eq. 7), "t" (Eq. 8)
    needs_acc_tgt: bool = False  # Alg. 2 l.1-7 before training
    sampled: bool = True  # completions are sampled N per prompt (False: one reference trace per prompt)

    @property
    def objective(self) -> Objective:
        return Objective.PG if self.step is StepKind.RL else Objective.CE

    @property
    def parse_kind(self) -> str:
        """The `parse_completion` format of this mode's completions."""
        return self.name if self.name in ("grpo", "drl", "jrl") else "grpo"

    @property
    def trains(self) -> bool:
        return self.step is not StepKind.PRESAMPLE


REGISTRY: dict[str, Mode] = {m.name: m for m in (
    Mode("grpo", StepKind.RL, "target"),
    Mode("drl", StepKind.RL, "drl", ratings=("d",)),
    Mode("jrl", StepKind.RL, "jrl", ratings=("d", "t"), needs_acc_tgt=True),
    Mode("sft", StepKind.SFT, None, sampled=False),  # prompt per record (sft_rating)
    Mode("sft-cn", StepKind.SFT_CN, "target"),
    Mode("presample", StepKind.PRESAMPLE, None, needs_acc_tgt=True, sampled=False),
)}
MODES: tuple[str, ...] = tuple(REGISTRY)


def get_mode(name: str) -> Mode:
    """The registry entry of `name`, or a ValueError listing the known ones.

    >>> get_mode("jrl").ratings
    ('d', 't')
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; expected one of {', '.join(MODES)}") from None


__all__ = ["MODES", "REGISTRY", "Mode", "Objective", "StepKind", "get_mode"]
