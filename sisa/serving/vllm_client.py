"""The wire to a vLLM OpenAI-compatible server: which LoRA adapters it holds, loading and
unloading them at runtime (vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, enabled by
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), and one streamed completion.

Prompts go as token ids: vLLM decodes exactly the context sisa routed by, whatever its own
tokenizer would have made of the text. Every failure to reach the server is a `VllmUnreachable`
naming its address (and never a prompt or a completion).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from sisa.storage.errors import SisaError


class VllmUnreachable(SisaError):
    """The vLLM server did not answer (down, starting, or the address is wrong)."""


class VllmError(SisaError):
    """The vLLM server answered with an error."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class VllmClient:
    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, trust_env=False)

    def close(self) -> None:
        self.http.close()

    # -- adapters --------------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models").json()["data"]

    def base_model(self) -> str:
        """The name vLLM serves its base model under (the one entry without a parent)."""
        bases = [m["id"] for m in self.models() if m.get("parent") is None]
        if not bases:
            raise VllmError(f"the vLLM server at {self.url} lists no base model", 502)
        return bases[0]

    def adapters(self) -> set[str]:
        """The LoRA adapters the server holds now (entries with a parent model)."""
        return {m["id"] for m in self.models() if m.get("parent") is not None}

    def load(self, name: str, path: str) -> None:
        self._call("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})

    def unload(self, name: str) -> None:
        """Unload `name`; one the server does not hold is already gone, which is what was asked."""
        try:
            self._call("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        except VllmError as e:
            if e.status != 404 and name in self.adapters():
                raise

    def ping(self) -> bool:
        try:
            self._call("GET", "/v1/models", timeout=2.0)
        except SisaError:
            return False
        return True

    # -- completions -----------------------------------------------------------------------------
    def stream_completion(self, body: dict[str, Any], timeout_s: float) -> Iterator[dict[str, Any]]:
        """The chunks of one streamed completion (`body` as OpenAI's, `stream` forced on). Closing
        the iterator closes the connection, which makes vLLM abort the request."""
        body = {**body, "stream": True}
        try:
            with self.http.stream("POST", "/v1/completions", json=body, timeout=timeout_s) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise VllmError(_message(resp, detail=False), resp.status_code)
                for line in resp.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        return
                    yield json.loads(data)
        except httpx.TransportError as e:
            raise VllmUnreachable(f"the vLLM server at {self.url} cannot be reached ({type(e).__name__})") from None

    def _call(self, method: str, path: str, timeout: float | None = None, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, timeout=timeout or self.timeout_s, **kw)
        except httpx.TransportError as e:
            raise VllmUnreachable(f"the vLLM server at {self.url} cannot be reached ({type(e).__name__})") from None
        if resp.status_code >= 400:
            raise VllmError(_message(resp), resp.status_code)
        return resp


def _message(resp: httpx.Response, detail: bool = True) -> str:
    """vLLM's error: its type, and its message for the adapter calls (which name adapters and
    paths). A completion's message is left out: a validation error may echo the prompt's ids."""
    try:
        err = resp.json()
        err = err.get("error", err) if isinstance(err, dict) else {}
        kind, text = err.get("type"), err.get("message")
    except (ValueError, AttributeError):
        kind, text = None, resp.text
    said = f": {str(text)[:300]}" if detail and text else ""
    return f"vLLM answered {resp.status_code}{f' {kind}' if kind else ''}{said}"
