"""The runtime a checkpoint names and the determinism settings training runs under
(sisa/training/runtime.py), the fixed date of chat templates (sisa/model/chat.py), and that a
Ray worker gets both the settings and a way to tell the user its warnings."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import date

import pytest
import torch

from sisa.config import DEFAULT_CHAT_DATE, SchedulerConfig, build_config
from sisa.model.base import load_base_model
from sisa.model.chat import render_chat, render_chat_prompt
from sisa.training import scheduler
from sisa.training.runtime import (
    describe_runtime,
    determinism_state,
    deterministic_torch,
    replay_expectation,
    runtime_differences,
)


def test_the_runtime_names_device_dtype_threads_and_versions():
    rt = describe_runtime(torch.device("cpu"), torch.float32, 1)
    assert rt["device"] == "cpu" and rt["dtype"] == "float32" and rt["threads"] == 1
    assert rt["torch"] == torch.__version__ and rt["cuda"] is None and rt["gpu"] is None
    assert runtime_differences(rt, rt) == [] and runtime_differences(None, rt) == []
    other = {**rt, "device": "cuda", "dtype": "bfloat16", "gpu": "NVIDIA H100"}
    assert runtime_differences(other, rt) == [
        "device: cuda -> cpu",
        "dtype: bfloat16 -> float32",
        "gpu: NVIDIA H100 -> None",
    ]
    ok, why = replay_expectation({"a": rt, "b": None}, rt)
    assert ok and why == []
    ok, why = replay_expectation({"a": rt, "b": other}, rt)
    assert not ok and len(why) == 1 and why[0].startswith("b was trained on another runtime (device: cuda -> cpu")


def test_deterministic_torch_raises_instead_of_warning_and_restores_the_callers_settings():
    torch.use_deterministic_algorithms(False)
    caught: list[str] = []
    with deterministic_torch(1, caught):
        state = determinism_state()
        warnings.warn("a worker's warning", UserWarning, stacklevel=1)
        warnings.warn("a worker's warning", UserWarning, stacklevel=1)
        warnings.warn("a library's API note", FutureWarning, stacklevel=1)
    assert state["deterministic"] and not state["warn_only"] and state["cublas_workspace"] == ":4096:8"
    assert state["cudnn_deterministic"] and state["threads"] == 1
    assert caught == ["UserWarning: a worker's warning"]  # once
    assert not torch.are_deterministic_algorithms_enabled()


@dataclass
class _Task:
    shard_id: int


@dataclass
class _Result:
    state: dict
    warnings: list[str] = field(default_factory=list)


def _report_determinism(task: _Task) -> _Result:
    caught: list[str] = []
    with deterministic_torch(1, caught):
        state = determinism_state()
        warnings.warn(f"shard {task.shard_id % 2} warns", UserWarning, stacklevel=1)
    return _Result(state, caught)


@pytest.mark.slow
def test_a_ray_worker_trains_under_the_settings_and_its_warnings_reach_the_user(capfd):
    scheduler.shutdown_ray()
    try:
        cfg = SchedulerConfig(backend="ray", num_cpus=2, threads_per_task=1)
        results = scheduler.run_shard_jobs(_report_determinism, [_Task(0), _Task(1), _Task(2)], cfg)
    finally:
        scheduler.shutdown_ray()
    for r in results:
        assert r.state["deterministic"] and not r.state["warn_only"]
        assert r.state["cublas_workspace"] == ":4096:8" and r.state["threads"] == 1
    err = capfd.readouterr().err
    assert "warning from shard job(s) 0, 2: UserWarning: shard 0 warns" in err
    assert "warning from shard job(s) 1: UserWarning: shard 1 warns" in err


DATED = (  # as Llama 3's: the date in a header before the turns
    "{{ '<|date|>' + strftime_now('%d %B %Y') + '|' + date_string }}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_chat_template_that_prints_the_date_renders_the_configs_date_not_today():
    for chat_date in (DEFAULT_CHAT_DATE, "01 Jan 2030"):
        cfg = build_config(overrides=[f"model.chat_date={chat_date}"])
        _, tok = load_base_model(cfg.model)
        tok.chat_template = DATED
        text, spans = render_chat(tok, [("user", "hi"), ("assistant", "hello")])
        prompt = render_chat_prompt(tok, [("user", "hi")])
        day = date(2024, 7, 26) if chat_date == DEFAULT_CHAT_DATE else date(2030, 1, 1)
        assert f"<|date|>{day:%d %B %Y}|{day:%d %b %Y}" in text and f"{day:%d %B %Y}" in prompt
        assert f"{date.today():%d %B %Y}" not in text or date.today() == day
        assert spans and text[spans[0][0] : spans[0][1]].startswith("hello")
    # The date is a training setting: another one is another fingerprint; the default keeps old stores'.
    assert (
        build_config(overrides=["model.chat_date=01 Jan 2030"]).training_fingerprint()
        != build_config().training_fingerprint()
    )
    with pytest.raises(Exception, match="model.chat_date"):
        build_config(overrides=["model.chat_date=yesterday"])
