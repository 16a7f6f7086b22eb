"""The vLLM server `sisa serve` starts on loopback when `service.vllm_url` is empty.

vLLM lives in an environment of its own (`service.vllm_python`, made by `make vllm`): it pins
another transformers than sisa's. The server gets the base model's folder (the one sisa loads
from: SmolLM2 as converted, or the user's), sisa's dtype (so both engines decode the same text),
runtime LoRA loading, and room for every shard's adapter of two versions at once (the one
serving and the one taking over). Its log goes to a private temporary file, deleted when it
stops; only a failed start shows its tail.

The server runs in a process group of its own under a small keeper (`_KEEPER`, the group's
leader): a SIGTERM to the keeper gives vLLM `_GRACE_S` to stop, then kills the whole group,
vLLM's engine processes included. On Linux the keeper gets that SIGTERM when the process that
started it dies (PR_SET_PDEATHSIG), so a `sisa serve` killed outright leaves no vLLM behind: the
api server alone would die that way, but its engine processes outlived it when measured here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sisa.config import SisaConfig
from sisa.model.base import base_model_folder, select_device, select_dtype
from sisa.serving.vllm_client import VllmClient
from sisa.storage.errors import ConfigError, SisaError

BASE_NAME = "sisa-base"  # what the server sisa starts calls the base model
_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the LoRA ranks vLLM builds kernels for
_GRACE_S = 10
# The group's leader: starts vLLM, and on SIGTERM (from `stop`, or from the kernel when sisa
# dies) lets it stop for _GRACE_S seconds, then kills the process group.
_KEEPER = f"""
import os, signal, subprocess, sys, time
child = subprocess.Popen(sys.argv[1:])
def stop(*_):
    child.terminate()
    deadline = time.monotonic() + {_GRACE_S}
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
sys.exit(child.wait())
"""
_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def vllm_url(cfg: SisaConfig) -> str:
    """Where the vLLM route decodes: the user's server, or the one `sisa serve` starts."""
    return cfg.service.vllm_url or f"http://127.0.0.1:{cfg.service.vllm_port}"


def server_command(cfg: SisaConfig) -> list[str]:
    folder = base_model_folder(cfg.model)
    if folder is None:
        raise ConfigError(
            [
                "serving.engine: vllm needs a base model folder vLLM can load (model.name=smollm2 or a path); "
                "the tiny test model is built in memory"
            ]
        )
    python = Path(cfg.service.vllm_python).expanduser()
    if not python.exists():
        raise ConfigError(
            [
                f"service.vllm_python {str(python)!r} does not exist: run `make vllm` (the environment vLLM lives "
                "in), point service.vllm_python at another, or set service.vllm_url to a running vLLM server"
            ]
        )
    dtype = cfg.service.vllm_dtype
    if dtype == "auto":
        dtype = _DTYPE_NAMES[str(select_dtype(cfg.model, select_device(cfg.model)))]
    rank = next((r for r in _RANKS if r >= cfg.lora.r), cfg.lora.r)
    loras = max(1, cfg.sharding.num_shards)
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        folder,
        "--served-model-name",
        BASE_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(cfg.service.vllm_port),
        "--dtype",
        dtype,
        "--enable-lora",
        "--max-lora-rank",
        str(rank),
        "--max-loras",
        str(loras),
        "--max-cpu-loras",
        str(2 * loras + 2),
        *cfg.service.vllm_args,
    ]


def _die_with_parent() -> None:  # runs in the keeper, between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class VllmServer:
    """A vLLM server process on 127.0.0.1:service.vllm_port."""

    def __init__(self, cfg: SisaConfig):
        self.cfg = cfg
        self.url = vllm_url(cfg)
        self.proc: subprocess.Popen | None = None
        self.logdir: str | None = None

    def start(self, say: Callable[[str], None] = lambda _: None) -> None:
        cmd = server_command(self.cfg)
        if VllmClient(self.url).ping():
            raise SisaError(
                f"something already answers at {self.url}: stop it, pick another service.vllm_port, or set "
                "service.vllm_url to use it"
            )
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on a CPU build (vLLM's default: 4)
        self.logdir = tempfile.mkdtemp(prefix="sisa-vllm-")
        log = open(os.path.join(self.logdir, "vllm.log"), "wb")  # noqa: SIM115 - the child writes it
        base, dtype = cmd[cmd.index("--model") + 1], cmd[cmd.index("--dtype") + 1]
        say(f"starting vLLM on {self.url} (base {base}, dtype {dtype}) ...")
        self.proc = subprocess.Popen(
            [cmd[0], "-c", _KEEPER, *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self._wait_ready(say)

    def _wait_ready(self, say: Callable[[str], None]) -> None:
        t0, client = time.monotonic(), VllmClient(self.url)
        try:
            while not client.ping():
                code = self.proc.poll()
                if code is not None:
                    tail = self._log_tail()
                    self.stop()
                    raise SisaError(f"the vLLM server exited with code {code} while starting:\n{tail}")
                if time.monotonic() - t0 > self.cfg.service.vllm_start_timeout_s:
                    self.stop()
                    raise SisaError(
                        f"the vLLM server did not answer within {self.cfg.service.vllm_start_timeout_s:.0f} s "
                        "(service.vllm_start_timeout_s)"
                    )
                time.sleep(1.0)
        finally:
            client.close()
        say(f"vLLM ready on {self.url} after {time.monotonic() - t0:.0f} s")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.logdir, "vllm.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = _GRACE_S + 5) -> None:
        """SIGTERM to the keeper (vLLM stops, or is killed after _GRACE_S), SIGKILL to the group
        after `timeout_s`; the log goes."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group (vLLM's engine processes)
        if self.logdir is not None:
            shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir = None
