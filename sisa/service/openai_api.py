"""The OpenAI wire format of `/v1/completions` and `/v1/chat/completions`: request bodies, what
is not supported (refused in OpenAI's error shape, never silently dropped), and the responses
and server-sent-event chunks built from the batcher's events (sisa/serving/batcher.py).

Pure functions and pydantic models: the router (sisa/service/completions.py) does the I/O.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sisa.model.decoding import Completion, DecodeRequest
from sisa.service.schemas import ChatMessage

# The routes whose errors take OpenAI's shape, {"error": {"message", "type", "param", "code"}}.
OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models"})


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAIBody(BaseModel):
    # Parameters sisa does not implement are accepted by name only to be refused with a clear
    # error (see `unsupported`); any other unknown key is ignored, as OpenAI's own server does.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int = 0
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionIn(_OpenAIBody):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatCompletionIn(_OpenAIBody):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=5)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


def unsupported(body: _OpenAIBody) -> list[str]:
    """Every parameter given with a value sisa cannot honour, named (empty: all fine)."""
    checks = [
        (body.top_p != 1.0, "top_p (nucleus sampling) is not supported; use temperature"),
        (
            bool(body.presence_penalty or body.frequency_penalty),
            "presence_penalty and frequency_penalty are not supported",
        ),
        (bool(body.logit_bias), "logit_bias is not supported"),
    ]
    if isinstance(body, CompletionIn):
        checks += [
            (body.echo, "echo is not supported"),
            (body.best_of not in (None, 1), "best_of is not supported"),
            (bool(body.suffix), "suffix (insertion) is not supported"),
        ]
    if isinstance(body, ChatCompletionIn):
        text_only = not body.response_format or body.response_format.get("type") in (None, "text")
        checks += [
            (bool(body.tools), "tools are not supported"),
            (not text_only, "response_format other than text is not supported"),
            (bool(body.top_logprobs and not body.logprobs), "top_logprobs needs logprobs: true"),
        ]
    return [message for refused, message in checks if refused]


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    """OpenAI's error shape; the message never holds record or prompt text."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def decode_requests(body: _OpenAIBody, prompt_ids: list[list[int]], top_shards: int) -> list[DecodeRequest]:
    """One DecodeRequest per prompt, `n` completions each (seeds seed, seed+1, ...)."""
    top = body.logprobs if isinstance(body, CompletionIn) else (body.top_logprobs or (1 if body.logprobs else 0))
    return [
        DecodeRequest(
            ids,
            body.max_tokens,
            greedy=body.temperature == 0,
            temperature=body.temperature or 1.0,
            seeds=[body.seed + i for i in range(body.n)],
            top_shards=top_shards,
            stop=body.stops(),
            logprobs=top or 0,
        )
        for ids in prompt_ids
    ]


@dataclass
class Reply:
    """What the response needs besides the completions: ids and names."""

    kind: Literal["text", "chat"]
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.id = self.id or f"{'cmpl' if self.kind == 'text' else 'chatcmpl'}-{secrets.token_hex(12)}"
        self.created = self.created or int(time.time())

    @property
    def object(self) -> str:
        return "text_completion" if self.kind == "text" else "chat.completion"


def finish_reason(c: Completion) -> str:
    """OpenAI's reasons: a deadline or a cancel ends a completion as its length would."""
    return "length" if c.finish in ("length", "cancelled", None) else "stop"


def usage(prompt_tokens: list[int], completions: list[list[Completion]]) -> dict[str, int]:
    done = sum(len(c.tokens) for cs in completions for c in cs)
    return {"prompt_tokens": sum(prompt_tokens), "completion_tokens": done, "total_tokens": sum(prompt_tokens) + done}


def _token_text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def text_logprobs(tokenizer: Any, c: Completion) -> dict[str, Any]:
    """The legacy completions `logprobs` object: tokens, their log-probs, the top-k at each."""
    tokens = [_token_text(tokenizer, t) for t in c.tokens]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": c.token_logprobs,
        "top_logprobs": [{_token_text(tokenizer, t): lp for t, lp in top} for top in c.top_logprobs],
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Any, c: Completion, top_k: int) -> dict[str, Any]:
    """The chat completions `logprobs` object: one entry per token, with its top alternatives."""

    def entry(token: int, lp: float) -> dict[str, Any]:
        text = _token_text(tokenizer, token)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    out = []
    for i, (token, lp) in enumerate(zip(c.tokens, c.token_logprobs, strict=True)):
        tops = c.top_logprobs[i][:top_k] if i < len(c.top_logprobs) else []
        out.append(entry(token, lp) | {"top_logprobs": [entry(t, v) for t, v in tops]})
    return {"content": out}


def response(
    reply: Reply, body: _OpenAIBody, tokenizer: Any, prompt_tokens: list[int], completions: list[list[Completion]]
) -> dict:
    """The whole (non-streamed) answer: choice index = prompt index × n + completion index."""
    choices = []
    for p, cs in enumerate(completions):
        for i, c in enumerate(cs):
            index = p * body.n + i
            if reply.kind == "text":
                lp = (
                    text_logprobs(tokenizer, c)
                    if isinstance(body, CompletionIn) and body.logprobs is not None
                    else None
                )
                choices.append({"index": index, "text": c.text, "logprobs": lp, "finish_reason": finish_reason(c)})
            else:
                lp = chat_logprobs(tokenizer, c, body.top_logprobs or 0) if body.logprobs else None
                message = {"role": "assistant", "content": c.text}
                choices.append({"index": index, "message": message, "logprobs": lp, "finish_reason": finish_reason(c)})
    return {
        "id": reply.id,
        "object": reply.object,
        "created": reply.created,
        "model": reply.model,
        "choices": choices,
        "usage": usage(prompt_tokens, completions),
    }


def sse(payload: dict | str) -> str:
    """One server-sent event: `data: <json>` and a blank line (`[DONE]` as it is)."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def chunk(reply: Reply, index: int, text: str | None, finish: str | None = None, first: bool = False) -> dict:
    """One streamed piece of choice `index`: its new text, or its finish reason."""
    if reply.kind == "text":
        choice: dict[str, Any] = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    else:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion.chunk"
    return {"id": reply.id, "object": kind, "created": reply.created, "model": reply.model, "choices": [choice]}


def usage_chunk(reply: Reply, prompt_tokens: list[int], completions: list[list[Completion]]) -> dict:
    kind = "text_completion" if reply.kind == "text" else "chat.completion.chunk"
    return {
        "id": reply.id,
        "object": kind,
        "created": reply.created,
        "model": reply.model,
        "choices": [],
        "usage": usage(prompt_tokens, completions),
    }
