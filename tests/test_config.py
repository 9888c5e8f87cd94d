"""Configuration: keyword arguments, then ANALYTICS_* variables, then defaults."""

from __future__ import annotations

import pytest

from analytics_sdk import Analytics, Config, ConfigurationError
from analytics_sdk.backends import MemoryCounterStore, redact_url


def test_precedence() -> None:
    env = {"ANALYTICS_PUSH_INTERVAL": "2.5", "ANALYTICS_FLUSH_INTERVAL": "30"}
    config = Config.load(env, flush_interval=5)
    assert (config.push_interval, config.flush_interval, config.shutdown_timeout) == (2.5, 5, 10.0)


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"push_interval": -1}, {}, "push_interval=-1 is not accepted; accepted: a number >= 0"),
        ({"flush_interval": 0}, {}, "flush_interval=0 is not accepted; accepted: a number > 0"),
        (
            {"max_buffered_keys": 1.5},
            {},
            "max_buffered_keys=1.5 is not accepted; accepted: an int >= 1",
        ),
        ({"flush_every": 3}, {}, "unknown setting(s) flush_every; accepted:"),
        ({"store": 42}, {}, "accepted: a URL such as 'memory://' or a CounterStore instance"),
        (
            {},
            {"ANALYTICS_FLUSH_INTERVAL": "soon"},
            "ANALYTICS_FLUSH_INTERVAL='soon' is not accepted",
        ),
        ({}, {"ANALYTICS_BACKGROUND": "maybe"}, "expected one of 1/0, true/false"),
    ],
)
def test_bad_settings_name_the_value(kwargs: dict, env: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigurationError) as info:
        Config.load(env, **kwargs)
    assert message in str(info.value)


def test_unknown_schemes_list_the_accepted_ones_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        Analytics(store="cassandra://admin:hunter2@db:9042/x", background=False)
    text = str(info.value)
    assert "hunter2" not in text
    assert "'cassandra'" in text
    assert "accepted: memory://" in text


def test_redact_url() -> None:
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert (
        redact_url("postgresql://app:pw@db/app?sslmode=require")
        == "postgresql://app:***@db/app?sslmode=require"
    )
    assert redact_url("memory://") == "memory://"


def test_instances_are_accepted() -> None:
    store = MemoryCounterStore()
    with Analytics(store=store, background=False) as client:
        assert client.store is store
