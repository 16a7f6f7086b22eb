"""The applications' API, OpenAI-compatible: POST /v1/completions, POST /v1/chat/completions and
GET /v1/models, decoded by the current version's batcher (sisa/serving/batcher.py): concurrent
requests share every forward, `stream: true` answers with server-sent events. The wire format
is sisa/service/openai_api.py.

Every request is checked before any work (`max_tokens`, the prompt's length against the model's
context and `service.max_prompt_tokens`, parameters sisa does not implement) and has a deadline
(`service.request_timeout_s`): when it passes, or the client goes away, the request leaves the
batch at the next step. A request already running when another version commits finishes on the
version it started with (sisa/service/model_cache.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sisa.lineage import versions
from sisa.model.decoding import Completion, DecodeRequest
from sisa.service import openai_api as oa
from sisa.service.auth import Client, record_call
from sisa.service.context import ServiceContext, context
from sisa.serving.batcher import Batcher, Delta, Done, Error, Event
from sisa.storage.errors import RefusedError

router = APIRouter()


class _Refused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@router.get("/v1/models")
def list_models(request: Request, who: Client):
    ctx = context(request)
    v = ctx.models.current_version()
    record_call(request, "200", model_version=v.model_version)
    return {
        "object": "list",
        "data": [{"id": _model_name(ctx, v), "object": "model", "created": _created(v), "owned_by": "sisa"}],
    }


@router.post("/v1/completions")
async def completions(body: oa.CompletionIn, request: Request, who: Client):
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    return await _serve(request, body, "text", lambda ens: [(p, True) for p in prompts])


@router.post("/v1/chat/completions")
async def chat_completions(body: oa.ChatCompletionIn, request: Request, who: Client):
    def render(ens) -> list[tuple[str, bool]]:
        if not getattr(ens.tokenizer, "chat_template", None):
            raise _Refused(
                400, f"the base model {context(request).cfg.model.name!r} has no chat template; use /v1/completions"
            )
        messages = [m.model_dump() for m in body.messages]
        # The template writes its own bos, as in training: no second one.
        return [(ens.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False)]

    return await _serve(request, body, "chat", render)


async def _serve(request: Request, body: oa._OpenAIBody, kind: str, prompts_of) -> Any:
    ctx = context(request)
    try:
        problems = oa.unsupported(body)
        if problems:
            raise _Refused(400, "; ".join(problems))
        if body.max_tokens > ctx.cfg.service.max_tokens:
            raise _Refused(
                400,
                f"max_tokens should be <= {ctx.cfg.service.max_tokens} (service.max_tokens), got {body.max_tokens}",
                "max_tokens",
            )
        v, ens, run, reqs = await _admit(ctx, body, prompts_of)
    except _Refused as e:
        record_call(request, f"{e.status} refused")
        return JSONResponse(oa.error_body(e.message, param=e.param), status_code=e.status)
    reply = oa.Reply(kind, _model_name(ctx, v))
    record_call(request, "200", model_version=v.model_version, prompts=len(reqs), stream=body.stream)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(request, run, reply, body, include_usage), media_type="text/event-stream")
    try:
        completions = await run.wait(request)
    except _Refused as e:
        return JSONResponse(oa.error_body(e.message), status_code=e.status)
    return oa.response(reply, body, ens.tokenizer, [len(r.ids) for r in reqs], completions)


async def _admit(
    ctx: ServiceContext, body: oa._OpenAIBody, prompts_of
) -> tuple[versions.ModelVersion, Any, _Run, list[DecodeRequest]]:
    """The request's prompts encoded and in the current version's batcher: (version, ensemble,
    run, decode requests). A batcher whose version stopped serving between the lookup and the
    submit has ended and refuses: the request goes to the version serving now instead. Loading
    a version's ensemble takes seconds: off the event loop, which goes on answering meanwhile."""
    for attempt in range(3):
        v, ens, batcher = await asyncio.to_thread(ctx.models.current_batcher)
        prompts = prompts_of(ens)
        ids = [_encode(ctx, ens, p, special) for p, special in prompts]
        reqs = oa.decode_requests(body, ids, ens.top_shards)
        try:
            return v, ens, _Run(batcher, reqs, ctx.cfg.service.request_timeout_s), reqs
        except RefusedError as e:
            if ctx.models.closed or attempt == 2:
                raise _Refused(503, e.message) from None
    raise AssertionError("the loop returns or raises")


def _encode(ctx: ServiceContext, ens, prompt: str, special: bool) -> list[int]:
    """The prompt's token ids, refused before any work when longer than the model's context or
    `service.max_prompt_tokens` (a huge prompt is refused by its length in characters first)."""
    limit = min(ctx.cfg.service.max_prompt_tokens, _context_length(ens) - 1)
    if len(prompt) > 16 * limit:  # no tokenizer packs 16 characters into one token
        raise _Refused(
            400, f"the prompt is longer than {limit} tokens (service.max_prompt_tokens, the model's context)", "prompt"
        )
    ids = ens.tokenizer(prompt, add_special_tokens=special)["input_ids"]
    if not ids:
        raise _Refused(400, "the prompt encodes to no tokens; give a non-empty prompt", "prompt")
    if len(ids) > limit:
        raise _Refused(
            400,
            f"the prompt has {len(ids)} tokens; at most {limit} are served (service.max_prompt_tokens, "
            "the model's context)",
            "prompt",
        )
    return ids


def _context_length(ens) -> int:
    config = getattr(ens.model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)


class _Run:
    """Every prompt of one API request in the batcher, its events on this event loop."""

    def __init__(self, batcher: Batcher, reqs: list[DecodeRequest], timeout_s: float):
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.results: list[list[Completion] | None] = [None] * len(reqs)
        self.tickets = []
        for p, r in enumerate(reqs):

            def put(event: Event, p: int = p) -> None:
                loop.call_soon_threadsafe(self.events.put_nowait, (p, event))

            self.tickets.append(batcher.submit(r, put, timeout_s))
        self.pending = len(reqs)

    def cancel(self) -> None:
        for t in self.tickets:
            t.cancel()

    async def next(self, request: Request) -> tuple[int, Event] | None:
        """The next event; None (and the work cancelled) once the client has gone."""
        while True:
            try:
                return await asyncio.wait_for(self.events.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    self.cancel()
                    return None

    async def wait(self, request: Request) -> list[list[Completion]]:
        while self.pending:
            got = await self.next(request)
            if got is None:
                raise _Refused(499, "the client closed the connection")
            p, event = got
            if isinstance(event, Error):
                self.cancel()
                raise _Refused(event.status, event.message)
            if isinstance(event, Done):
                self.results[p] = event.completions
                self.pending -= 1
        return self.results


async def _stream(
    request: Request, run: _Run, reply: oa.Reply, body: oa._OpenAIBody, include_usage: bool
) -> AsyncIterator[str]:
    started: set[int] = set()
    try:
        while run.pending:
            got = await run.next(request)
            if got is None:
                return
            p, event = got
            if isinstance(event, Error):
                run.cancel()
                yield oa.sse(oa.error_body(event.message))
                return
            if isinstance(event, Delta):
                index = p * body.n + event.index
                yield oa.sse(oa.chunk(reply, index, event.text, first=index not in started))
                started.add(index)
            elif isinstance(event, Done):
                run.results[p] = event.completions
                run.pending -= 1
                for i, c in enumerate(event.completions):
                    index = p * body.n + i
                    yield oa.sse(oa.chunk(reply, index, None, oa.finish_reason(c), first=index not in started))
                    started.add(index)
        if include_usage:
            yield oa.sse(oa.usage_chunk(reply, [len(t.request.ids) for t in run.tickets], run.results))
        yield oa.sse("[DONE]")
    finally:
        run.cancel()  # a stream the client dropped stops its work


def _model_name(ctx: ServiceContext, v: versions.ModelVersion) -> str:
    return f"{ctx.cfg.tracking.registered_model}@v{v.model_version}"


def _created(v: versions.ModelVersion) -> int:
    return int(datetime.fromisoformat(v.created_at).timestamp())
