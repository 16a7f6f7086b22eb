"""Chat records rendered with the tokenizer's own chat template: the text of a conversation and
the character spans of its assistant turns (what training scores), and the prompt that
generation continues. Any template works, not only those that mark assistant text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sisa.config import DEFAULT_CHAT_DATE
from sisa.model.base import TextTokenizer
from sisa.storage.errors import ConfigError, SisaError


def require_chat_template(tokenizer: TextTokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "sisa_model_name", None) or tokenizer.name_or_path or "the base model"
        raise ConfigError(
            [
                f"the tokenizer of model {name!r} has no chat template, so chat records cannot be rendered; "
                "use a chat model's folder (its tokenizer_config.json or chat_template.jinja), or ingest the "
                "records as prompt-completion"
            ]
        )


# A template's own `strftime_now` calls, with a literal format: each gets the fixed date, formatted.
_STRFTIME_CALL = re.compile(r"strftime_now\(\s*(['\"])(.*?)\1\s*\)")
# Defined first in the template, it shadows transformers' `strftime_now` (today's date) within it.
_FIXED_STRFTIME = "{%- macro strftime_now(fmt) -%}{{- sisa_dates[fmt] -}}{%- endmacro -%}"


def apply_template(tokenizer: TextTokenizer, turns: list[dict[str, str]], generation_prompt: bool) -> str:
    """The conversation rendered to text with the tokenizer's template, at the config's fixed
    `model.chat_date` (set on the tokenizer by `load_base_model`): as Llama 3's `date_string`, and
    as what the template's `strftime_now` calls print. Today's date would make a record's tokens
    depend on the day it is rendered, and a replay on another day would train other tokens."""
    day = datetime.strptime(getattr(tokenizer, "sisa_chat_date", DEFAULT_CHAT_DATE), "%d %b %Y")
    template = tokenizer.chat_template
    extra: dict[str, Any] = {"date_string": day.strftime("%d %b %Y")}
    if isinstance(template, str) and "strftime_now" in template:
        extra["sisa_dates"] = {m.group(2): day.strftime(m.group(2)) for m in _STRFTIME_CALL.finditer(template)}
        extra["chat_template"] = _FIXED_STRFTIME + template
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt, **extra)


def render_chat(tokenizer: TextTokenizer, messages: Sequence[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """A conversation rendered with the tokenizer's chat template, and the character spans of
    its assistant turns (content and the template's end-of-turn marker).

    A turn's span is what rendering the conversation up to and including it adds to rendering
    the turns before it with the generation prompt: exactly what the model is asked to produce
    when it serves. This works with any template, not only those that mark assistant text with
    `{% generation %}` (which `return_assistant_tokens_mask` needs and few shipped templates
    have); it needs each rendering to be a prefix of the next, which is checked."""
    require_chat_template(tokenizer)
    turns = [{"role": r, "content": c} for r, c in messages]

    def render(upto: int, generation_prompt: bool) -> str:
        return apply_template(tokenizer, turns[:upto], generation_prompt)

    full = render(len(turns), False)
    spans = []
    for i, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        before, upto = render(i, True), render(i + 1, False)
        if not (upto.startswith(before) and full.startswith(upto)):
            name = getattr(tokenizer, "sisa_model_name", None) or tokenizer.name_or_path
            raise SisaError(
                f"the chat template of model {name!r} does not render a conversation's turns as a prefix "
                "of the next, so the assistant's tokens cannot be found; train with training.loss_on=all"
            )
        spans.append((len(before), len(upto)))
    return full, spans


def render_chat_text(tokenizer: TextTokenizer, messages: Sequence[tuple[str, str]]) -> str:
    """The whole conversation rendered with the template (no spans): what `render_chat` returns
    first, at a third of its cost."""
    require_chat_template(tokenizer)
    turns = [{"role": r, "content": c} for r, c in messages]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=False)


def render_chat_prompt(tokenizer: TextTokenizer, messages: Sequence[tuple[str, str]]) -> str:
    """The conversation so far plus the template's generation prompt: what generation continues."""
    require_chat_template(tokenizer)
    turns = [{"role": r, "content": c} for r, c in messages]
    return apply_template(tokenizer, turns, True)
