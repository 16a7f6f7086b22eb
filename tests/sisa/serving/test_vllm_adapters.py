"""The vLLM route's parts that need no vLLM server: which adapters are sisa's, the purge's
fail-closed path, the command of the server sisa starts, and the config that goes with it
(the route against a real server: test_vllm_route.py)."""

from __future__ import annotations

import pytest
from sisa.storage.errors import ConfigError, SisaError

from sisa.config import build_config
from sisa.serving.vllm_adapters import is_sisa_adapter, unload_purged
from sisa.serving.vllm_server import server_command, vllm_url
from tests.servers import free_port

VLLM = ["serving.engine=vllm", "serving.top_shards=1"]


def test_sisa_adapters_are_checkpoint_ids():
    assert is_sisa_adapter("s00001-l000002-0123456789abcdef")
    assert is_sisa_adapter("s00000-l000000-approx0a1b2c3d4e")
    assert not is_sisa_adapter("someone-elses-lora") and not is_sisa_adapter("sisa-base")


def test_engine_vllm_needs_top1_posterior():
    with pytest.raises(ConfigError) as e:
        build_config(overrides=["serving.engine=vllm"])
    assert "serving.top_shards: 1" in str(e.value) and "got top_shards 2" in str(e.value)
    with pytest.raises(ConfigError, match="aggregation uniform"):
        build_config(overrides=[*VLLM, "serving.aggregation=uniform"])
    assert build_config(overrides=VLLM).serving.engine == "vllm"


def test_purge_fails_closed_when_vllm_is_out_of_reach():
    dead = f"http://127.0.0.1:{free_port()}"
    assert unload_purged(build_config(overrides=[f"service.vllm_url={dead}"]), {"s00000-l000000-ab"}) == []
    cfg = build_config(overrides=[*VLLM, f"service.vllm_url={dead}"])
    with pytest.raises(SisaError) as e:
        unload_purged(cfg, {"s00000-l000000-ab"})
    assert dead in e.value.message and "purge is not complete" in e.value.message and "--resume" in e.value.message


def test_server_command(tmp_path):
    with pytest.raises(ConfigError, match="base model folder"):
        server_command(build_config(overrides=VLLM))
    (tmp_path / "config.json").write_text("{}")
    cfg = build_config(overrides=[*VLLM, f"model.name={tmp_path}", "lora.r=4", "service.vllm_python=/no/python"])
    with pytest.raises(ConfigError, match="make vllm"):
        server_command(cfg)
    cfg = build_config(
        overrides=[*VLLM, f"model.name={tmp_path}", "lora.r=4", "model.device=cpu", "service.vllm_python=/bin/sh"]
    )
    cmd = server_command(cfg)
    assert cmd[cmd.index("--model") + 1] == str(tmp_path) and cmd[cmd.index("--dtype") + 1] == "float32"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8"  # vLLM's smallest rank >= 4
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and vllm_url(cfg).startswith("http://127.0.0.1:")
