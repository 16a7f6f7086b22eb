"""Chat records rendered with the tokenizer's own chat template: the text of a conversation and
the character spans of its assistant turns (what training scores), and the prompt that
generation continues. Any template works, not only those that mark assistant text.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        return tokenizer.apply_chat_template(turns[:upto], tokenize=False, add_generation_prompt=generation_prompt)

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


def render_chat_prompt(tokenizer: TextTokenizer, messages: Sequence[tuple[str, str]]) -> str:
    """The conversation so far plus the template's generation prompt: what generation continues."""
    require_chat_template(tokenizer)
    turns = [{"role": r, "content": c} for r, c in messages]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
