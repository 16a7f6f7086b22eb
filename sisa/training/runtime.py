"""Where a checkpoint was trained, and the settings that make training repeat bit for bit there.

The same records, config and seeds give the same bytes only on the same runtime: PyTorch's
reproducibility notes promise nothing across devices, GPUs, drivers or library versions, and a
CPU's float reductions change with the thread count. So every checkpoint records its runtime
(`describe_runtime`), a chain is continued only on the runtime of its last checkpoint unless
`model.runtime_change: allow` says otherwise, and `sisa verify --replay` says before it starts
whether identical tensors are to be expected here.

`deterministic_torch` is the one place that turns determinism on: deterministic kernels that
raise (not warn) where none exists, cuBLAS's fixed workspace, cuDNN without autotuning, and a
deterministic attention backward. Its warnings are collected for the caller to show: a Ray
worker's own output is dropped (`log_to_driver: False`).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

# cuBLAS picks nondeterministic reduction splits unless its workspace is fixed, and reads this
# when it first starts in a process: every worker gets it in its environment (scheduler.py), and
# this process sets it before any CUDA work (importing torch starts no cuBLAS).
CUBLAS_WORKSPACE = ":4096:8"
DETERMINISM_ENV = {"CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE}
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)

# The fields that, when they differ, may change a checkpoint's bytes.
RUNTIME_FIELDS = ("device", "dtype", "threads", "torch", "cuda", "cudnn", "transformers", "peft", "gpu")


def _version(package: str) -> str:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "unknown"


def describe_runtime(device: torch.device, dtype: torch.dtype, threads: int) -> dict[str, Any]:
    """The runtime training runs on: device type, the resolved dtype, torch threads, the versions
    of torch, CUDA, cuDNN, transformers and peft, and the GPU's name (None on a CPU)."""
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": threads,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }


def runtime_differences(recorded: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """`field: recorded -> now` for every field that differs; none when nothing was recorded (a
    checkpoint from before runtimes were recorded)."""
    if not recorded:
        return []
    return [
        f"{k}: {recorded.get(k)} -> {now.get(k)}" for k in RUNTIME_FIELDS if k in recorded and recorded[k] != now.get(k)
    ]


def runtime_label(runtime: dict[str, Any]) -> str:
    """One line naming a runtime, e.g. `cpu float32, 1 thread(s), torch 2.13.0`."""
    where = runtime.get("gpu") or runtime.get("device")
    line = f"{where} {runtime.get('dtype')}, {runtime.get('threads')} thread(s), torch {runtime.get('torch')}"
    if runtime.get("cuda"):
        line += f", CUDA {runtime['cuda']}, cuDNN {runtime.get('cudnn')}"
    return line + f", transformers {runtime.get('transformers')}, peft {runtime.get('peft')}"


@contextmanager
def deterministic_torch(threads: int, caught: list[str] | None = None) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count while the block runs; the caller's settings
    come back afterwards (a serial shard job or the fast path runs in the caller's process).

    An op with no deterministic implementation raises instead of warning. On CUDA, cuDNN runs
    without autotuning and attention uses the backends whose backward is deterministic under
    these settings (flash and math; not the memory-efficient or cuDNN kernels). Warnings raised
    inside (but libraries' deprecation notes) are appended to `caught` (as text, once each) when
    given, so a worker's warnings can travel back to the user with its result."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    warn_only_before = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with ExitStack() as stack:
            if torch.cuda.is_available():
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]))
            if caught is not None:
                seen = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("default")
                # libraries' notes to their own callers about their APIs are not the user's to act on
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
            yield
            if caught is not None:
                for w in seen:
                    text = f"{w.category.__name__}: {w.message}"
                    if text not in caught:
                        caught.append(text)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before, warn_only=warn_only_before)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_before


def determinism_state() -> dict[str, Any]:
    """What a process runs under now (a test asks a Ray worker for it inside `deterministic_torch`)."""
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "threads": torch.get_num_threads(),
    }


def replay_expectation(recorded: dict[str, dict[str, Any] | None], here: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether a replay here is expected to give identical tensors, and why not: `recorded` maps
    each checkpoint of the chains being replayed to its recorded runtime (None: from before
    runtimes were recorded, taken as this one)."""
    reasons = []
    for cid, runtime in sorted(recorded.items()):
        diff = runtime_differences(runtime, here)
        if diff:
            reasons.append(f"{cid} was trained on another runtime ({'; '.join(diff)})")
    return not reasons, reasons
