"""The applications' API, OpenAI-compatible: POST /v1/completions and /v1/chat/completions,
decoded from the current version's ensemble (sisa/service/model_cache.py). A request already
running when another version commits finishes on the version it started with."""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, HTTPException, Request

from sisa.config import SisaConfig
from sisa.lineage import versions
from sisa.service.auth import Client, record_call
from sisa.service.context import ServiceContext, context
from sisa.service.schemas import ChatCompletionIn, CompletionIn
from sisa.serving import engine as serving
from storage.errors import ValidationError

router = APIRouter()
_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@router.post("/v1/completions")
def completions(body: CompletionIn, request: Request, who: Client):
    ctx = context(request)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    v, outs = _complete(ctx, prompts, body.max_tokens, body.temperature, body.stop, body.seed)
    record_call(request, "200", model_version=v.model_version, prompts=len(prompts))
    return {
        "id": f"cmpl-{secrets.token_hex(8)}", "object": "text_completion", "created": int(time.time()),
        "model": _model_name(ctx.cfg, v),
        "choices": [{"index": i, "text": t, "finish_reason": f, "logprobs": None} for i, (t, f) in enumerate(outs)],
        "usage": dict(_NO_USAGE),
    }


@router.post("/v1/chat/completions")
def chat_completions(body: ChatCompletionIn, request: Request, who: Client):
    ctx = context(request)
    _, ens = ctx.models.current()
    template = getattr(ens.tokenizer, "chat_template", None)
    if not template:
        record_call(request, "400 no chat template")
        raise HTTPException(400, f"the base model {ctx.cfg.model.name!r} has no chat template; use /v1/completions")
    messages = [m.model_dump() for m in body.messages]
    prompt = ens.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The template writes its own bos, as in training: no second one.
    v, ((text, finish),) = _complete(ctx, [prompt], body.max_tokens, body.temperature, body.stop, body.seed,
                                     add_special_tokens=False)
    record_call(request, "200", model_version=v.model_version)
    return {
        "id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion", "created": int(time.time()),
        "model": _model_name(ctx.cfg, v),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": dict(_NO_USAGE),
    }


def _complete(
    ctx: ServiceContext, prompts: list[str], max_tokens: int, temperature: float, stop: str | list[str] | None,
    seed: int, add_special_tokens: bool = True,
) -> tuple[versions.ModelVersion, list[tuple[str, str]]]:
    """(the version decoded from, [(text, finish reason)]): each prompt's text cut at its first stop."""
    limit = ctx.cfg.service.max_tokens
    if max_tokens > limit:
        raise ValidationError(f"max_tokens should be <= {limit} (service.max_tokens), got {max_tokens}")
    v, ens = ctx.models.current()
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    out = []
    for p in prompts:
        text = serving.generate_text(ens, p, max_tokens, temperature == 0, temperature or 1.0, seed,
                                     add_special_tokens=add_special_tokens)
        cut = min((text.index(s) for s in stops if s and s in text), default=None)
        out.append((text if cut is None else text[:cut], "stop" if cut is not None else "length"))
    return v, out


def _model_name(cfg: SisaConfig, v: versions.ModelVersion) -> str:
    return f"{cfg.tracking.registered_model}@v{v.model_version}"


