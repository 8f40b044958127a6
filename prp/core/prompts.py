"""Prompts of the paper's Table 4 (P_draft, P_joint) and the plain target prompt P.

A query x = (P, I, Q) becomes one user turn: the image first, then the format prompt and the
question.  `build_messages` returns the chat-template message list that HF processors take.
"""
from __future__ import annotations

from typing import Literal

Mode = Literal["drl", "jrl"]

# Table 4, verbatim (including the paper's grammar): the models were trained on these strings.
P_DRAFT = (
    "Solve the question. The user asks a question, and you solves it. You first randomly evaluate "
    "the confidence score of the problem from 0.00 to 0.99, think about the reasoning process in "
    "mind and then provides the user with the answer. The answer is in latex Format and wrapped in "
    "$...$. The confidence score, reasoning process and answer are enclosed within <confidence> "
    "</confidence>, <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<confidence>confidence score</confidence><think> Since $1+1=2$, so the answer is 2 .</think>"
    "<answer> 2 </answer>, which means assistant's output should start with "
    "<confidence></confidence>, then <think></think> and end with <answer></answer>."
)

P_JOINT = (
    "Solve the question. The user asks a question, and you solves it. You first randomly evaluate "
    "the target score and the confidence score of the problem from 0.00 to 0.99, thinks about the "
    "reasoning process in the mind and then provides the user with the answer. The answer is in "
    "latex Format and wrapped in $...$. The target and confidence score, reasoning process and "
    "answer are enclosed within <target> </target>, <confidence> </confidence>, <think> </think> "
    "and <answer> </answer> tags, respectively, i.e., <target>target score</target>"
    "<confidence>confidence score</confidence><think> Since $1 + 1 = 2$, so the answer is 2 ."
    "</think><answer> 2 </answer>, which means assistant's output should start with "
    "<target></target><confidence></confidence>, then <think></think> and end with "
    "<answer></answer>."
)

# The target model's prompt P (Alg. 2 l.3, Alg. 3-4 l.14): no rating, same answer format.
P_TARGET = (
    "Solve the question. Think about the reasoning process in the mind and then provide the answer. "
    "The answer is in latex Format and wrapped in $...$. The reasoning process and answer are "
    "enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> Since $1+1=2$, so the answer is 2 .</think><answer> 2 </answer>."
)

PROMPTS: dict[str, str] = {"drl": P_DRAFT, "jrl": P_JOINT, "target": P_TARGET, "grpo": P_TARGET}

# Paradigm 2's correctness tokens (Sec. 2.1): train.py --mode sft-cn adds them, eval.py reads s_2 from them.
CN_TOKEN, UN_TOKEN = "[CN]", "[UN]"

# The tag that closes the rating prefix: routing stops generating right after it (Alg. 3-4, S).
RATING_CLOSE_TAG = "</confidence>"


def prompt_for(mode: str) -> str:
    """The format prompt for a mode: 'drl' -> P_draft, 'jrl' -> P_joint, 'target'/'grpo' -> P."""
    try:
        return PROMPTS[mode]
    except KeyError:
        raise ValueError(f"unknown prompt mode {mode!r}; expected one of {sorted(PROMPTS)}") from None


def build_messages(question: str, *, mode: str, with_image: bool = True) -> list[dict]:
    """One user turn: [image], then the format prompt and the question.

    >>> build_messages("What is 2+3?", mode="drl")[0]["content"][0]
    {'type': 'image'}
    """
    content: list[dict] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": f"{prompt_for(mode)}\n{question}"})
    return [{"role": "user", "content": content}]
