"""The shipped demo chat templates (issue 25, item 6): a partial assistant message renders the same
whether its content is a string or a list of parts (vLLM turns strings into parts), continuing it
(`continue_final_message`) gives the generation prompt plus exactly its text, and the user turn the
models were trained on renders as before."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from prp.core.modeling import load_processor
from prp.core.prompts import build_messages

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("draft", "drl", "jrl", "target")


def _old_template(name: str) -> str | None:
    """The template as first shipped (git history), to check the user turn is unchanged."""
    out = subprocess.run(["git", "show", f"6406860:demo/models/{name}/chat_template.jinja"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


@pytest.fixture(scope="module", params=MODELS)
def processor(request):
    return request.param, load_processor(ROOT / "demo" / "models" / request.param)


@pytest.mark.parametrize("mode", ["jrl", "drl", "target"])
def test_partial_assistant_message_renders_the_same_as_string_and_parts(processor, mode):
    _, proc = processor
    user = build_messages("What is 2+3?", mode=mode)
    plain = proc.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    for partial in ("<target>0.", "<target>0.42</target><confidence>0.", "<confidence>0.87</confidence>",
                    "<confidence>0.8</confidence><think>one\ntwo"):
        as_string = [*user, {"role": "assistant", "content": partial}]
        as_parts = [*user, {"role": "assistant", "content": [{"type": "text", "text": partial}]}]
        renders = [proc.apply_chat_template(m, tokenize=False, continue_final_message=True,
                                            add_generation_prompt=False) for m in (as_string, as_parts)]
        assert renders[0] == renders[1] == plain + partial, partial


def test_user_turn_renders_as_trained(processor):
    """The user turn (list of parts, as the router and training send it) is unchanged; a string content
    renders as one text part."""
    name, proc = processor
    old = _old_template(name)
    if old is None:
        pytest.skip("git history not available")
    for mode in ("jrl", "drl", "target"):
        for with_image in (True, False):
            msgs = build_messages("What is 2+3?", mode=mode, with_image=with_image)
            new = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            assert new == proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                                   chat_template=old)
        text_only = build_messages("What is 2+3?", mode=mode, with_image=False)
        as_string = [{"role": "user", "content": text_only[0]["content"][0]["text"]}]
        assert proc.apply_chat_template(as_string, tokenize=False, add_generation_prompt=True) == \
            proc.apply_chat_template(text_only, tokenize=False, add_generation_prompt=True)


def test_old_template_broke_the_list_rendering():
    """The bug this fixes (vLLM's list of parts): the old template prefixed '[joint] ' to the partial."""
    old = _old_template("jrl")
    if old is None:
        pytest.skip("git history not available")
    proc = load_processor(ROOT / "demo" / "models" / "jrl")
    partial = {"role": "assistant", "content": [{"type": "text", "text": "<target>0."}]}
    msgs = [*build_messages("Q?", mode="jrl"), partial]
    out = proc.apply_chat_template(msgs, tokenize=False, continue_final_message=True, add_generation_prompt=False,
                                   chat_template=old)
    assert out.endswith("[joint] <target>0.")
