"""Per-token rate limits (sisa/service/limits.py): the token bucket on a clock the test moves, and
the config keys that set it. Over HTTP (429, Retry-After, the audit log) in
tests/reliability/test_floods.py."""

from __future__ import annotations

import pytest
from sisa.storage.errors import ConfigError

from sisa.config import ServiceConfig, build_config
from sisa.service.limits import RateLimits


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_gets_its_burst_then_its_rate_and_each_api_and_token_its_own_bucket():
    clock = Clock()
    limits = RateLimits(
        ServiceConfig(rate_limit_privacy_per_min=60, rate_limit_completions_per_min=120, rate_limit_burst=3), clock
    )
    assert [limits.take("privacy", "a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limits.take("privacy", "a")
    assert wait == pytest.approx(1.0)  # one call a second: the next in 1 s
    assert limits.take("privacy", "b") == 0.0 and limits.take("completions", "a") == 0.0
    clock.now += 0.5
    assert limits.take("privacy", "a") == pytest.approx(0.5)  # a refused call is not counted
    clock.now += 0.5
    assert limits.take("privacy", "a") == 0.0 and limits.take("privacy", "a") > 0
    clock.now += 3600  # a quiet hour fills the bucket to its burst, no more
    assert [limits.take("privacy", "a") == 0.0 for _ in range(4)] == [True, True, True, False]
    for _ in range(3):
        assert limits.take("completions", "a") == 0.0
    assert limits.take("completions", "a") == pytest.approx(0.5)  # two a second


def test_zero_turns_a_limit_off():
    limits = RateLimits(ServiceConfig(rate_limit_privacy_per_min=0, rate_limit_burst=1), Clock())
    assert all(limits.take("privacy", "a") == 0.0 for _ in range(1000))
    assert limits.take("completions", "a") == 0.0 and limits.take("completions", "a") > 0


def test_the_keys_are_validated_together():
    with pytest.raises(ConfigError) as info:
        build_config(
            {
                "service": {
                    "rate_limit_privacy_per_min": -1,
                    "rate_limit_burst": 0,
                    "rate_limit_completions_per_min": "x",
                }
            }
        )
    text = str(info.value)
    assert "service.rate_limit_privacy_per_min" in text and "service.rate_limit_burst" in text
    assert "service.rate_limit_completions_per_min" in text
    cfg = build_config(overrides=["service.rate_limit_privacy_per_min=10", "service.rate_limit_burst=2"])
    assert (cfg.service.rate_limit_privacy_per_min, cfg.service.rate_limit_burst) == (10, 2)
