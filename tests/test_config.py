"""Configuration: keyword arguments, then ANALYTICS_* variables, then defaults."""

from __future__ import annotations

import time

import attrs
import pytest

from analytics_sdk import Analytics, Config, ConfigurationError
from analytics_sdk.backends import MemoryCounterStore, redact_url
from analytics_sdk.config import ENVIRONMENT
from analytics_sdk.testing import ManualClock


def test_precedence() -> None:
    env = {"ANALYTICS_PUSH_INTERVAL": "2.5", "ANALYTICS_FLUSH_INTERVAL": "30"}
    config = Config.load(env, flush_interval=5)
    assert (config.push_interval, config.flush_interval, config.shutdown_timeout) == (2.5, 5, 10.0)


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        (
            {"push_interval": -1},
            {},
            "push_interval=-1 is not accepted; accepted: a finite number >= 0",
        ),
        (
            {"flush_interval": 0},
            {},
            "flush_interval=0 is not accepted; accepted: a finite number > 0",
        ),
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
            "ANALYTICS_FLUSH_INTERVAL='soon' (setting flush_interval) is not accepted",
        ),
        ({}, {"ANALYTICS_BACKGROUND": "maybe"}, "accepted: one of 1/0, true/false"),
    ],
)
def test_bad_settings_name_the_value(kwargs: dict, env: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigurationError) as info:
        Config.load(env, **kwargs)
    assert message in str(info.value)


# Every setting: values that work (as keyword) and values refused, with the words the error
# must contain; then environment spellings that work and that are refused.
NUMBER_GT0 = ("a finite number > 0", [True, False, "1", None, 0, -1, float("nan"), float("inf")])
NUMBER_GE0 = ("a finite number >= 0", [True, "0", None, -0.5, float("nan"), float("-inf")])
INT_GE1 = ("an int >= 1", [True, 1.0, 1.5, "10", None, 0, -3])
BOOL = ("True or False", [0, 1, "no", "yes", "false", None])
SETTINGS: dict[str, tuple[list[object], tuple[str, list[object]]]] = {
    "store": (
        ["memory://", MemoryCounterStore()],
        ("a URL such as 'memory://'", [42, None, "redis", "", b"memory://"]),
    ),
    "sink": (
        ["memory://"],
        ("a URL such as 'memory://'", [42, None, "memory", MemoryCounterStore()]),
    ),
    "push_interval": ([0, 0.5, 2], NUMBER_GE0),
    "flush_interval": ([0.1, 60], NUMBER_GT0),
    "shutdown_timeout": ([1, 2.5], NUMBER_GT0),
    "max_buffered_keys": ([1, 10**6], INT_GE1),
    "max_push_keys": ([1, 50_000], INT_GE1),
    "max_property_sets": ([1, 5000], INT_GE1),
    "max_event_names": ([1, 10**6], INT_GE1),
    "max_properties": ([1, 64], INT_GE1),
    "backoff_initial": ([0.5], NUMBER_GT0),
    "backoff_max": ([120], NUMBER_GT0),
    "schedule_jitter": ([0, 0.5], NUMBER_GE0),
    "claim_lease": ([30.0], NUMBER_GT0),
    "max_batch_keys": ([1, 50_000], INT_GE1),
    "prometheus_labels": (
        [(), ("plan",), ["plan", "region"]],
        (
            "a list or tuple of property names",
            ["plan", "user_id", 5, None, {"plan"}, ("plan", "plan"), ("user_id",), ("a-b",), (1,)],
        ),
    ),
    "group_types": (
        [("account",), ["account", "workspace"], ("a", "b", "c", "d", "e")],
        (
            "a list or tuple of 1 to 5 distinct group types",
            [
                "account",
                (),
                ("Account",),
                ("acc-ount",),
                ("a", "b", "c", "d", "e", "f"),
                ("account", "account"),
                (1,),
                ("x" * 33,),
                None,
            ],
        ),
    ),
    "metrics_port": (
        [None, 0, 9464],
        ("a port from 0 to 65535, or None", ["9464", 9464.0, True, -1, 65536]),
    ),
    "metrics_addr": (["127.0.0.1", "::1"], ("a non-empty string", [None, 127, "", "  "])),
    "flusher": ([True, False], BOOL),
    "background": ([True, False], BOOL),
    "spool_dir": (
        [None, "/tmp/analytics-spool"],
        (
            "a directory path (created if missing), or None",
            [3, "", b"/tmp", "/dev/null"],  # /dev/null exists and is not a directory
        ),
    ),
    "spool_after": ([5, 60.0], NUMBER_GT0),
    "enabled": ([True, False], BOOL),
    "on_error": ([None, print], ("None or a callable on_error(exc, operation)", [1, "log", True])),
    "before_track": (
        [None, lambda event, user_id, properties: None],
        ("None or a callable before_track(event, user_id, properties)", [0, "scrub", {}]),
    ),
    "dedupe_window": (
        [1, 86400, 2.5, 30 * 24 * 3600],
        (
            "a number of seconds from 1 to 2592000 (30 days)",
            [0, 0.5, -1, True, "86400", None, float("nan"), float("inf"), 30 * 24 * 3600 + 1],
        ),
    ),
    "clock": ([ManualClock()], ("a Clock", [None, 0, "system", time.time])),
}

ENV_OK: dict[str, list[tuple[str, object]]] = {
    "store": [("memory://", "memory://")],
    "sink": [("memory://", "memory://")],
    "push_interval": [("0", 0.0), (" 1.5 ", 1.5), ("2", 2.0)],
    "flush_interval": [("30", 30.0), ("1e1", 10.0)],
    "shutdown_timeout": [("5", 5.0)],
    "max_buffered_keys": [("1000", 1000), (" 7 ", 7)],
    "max_push_keys": [("500", 500)],
    "max_property_sets": [("10", 10)],
    "max_event_names": [("25", 25)],
    "max_properties": [("4", 4)],
    "backoff_initial": [("0.5", 0.5)],
    "backoff_max": [("30", 30.0)],
    "schedule_jitter": [("0", 0.0)],
    "claim_lease": [("60", 60.0)],
    "max_batch_keys": [("1000", 1000)],
    "prometheus_labels": [("plan", ("plan",)), ("plan, region", ("plan", "region")), ("", ())],
    "group_types": [("account", ("account",)), ("account, workspace", ("account", "workspace"))],
    "metrics_port": [("0", 0), ("9464", 9464)],
    "metrics_addr": [("0.0.0.0", "0.0.0.0")],
    "flusher": [(t, True) for t in ("1", "true", "YES", " on ")]
    + [(f, False) for f in ("0", "False", "no", "OFF")],
    "background": [("true", True), ("0", False)],
    "spool_dir": [("", None), ("/tmp/analytics-spool", "/tmp/analytics-spool")],
    "spool_after": [("30", 30.0)],
    "enabled": [("0", False), ("false", False), ("1", True), ("on", True)],
    "dedupe_window": [("86400", 86400.0), ("3600.5", 3600.5)],
}
ENV_BAD: dict[str, list[str]] = {
    "store": ["", "redis"],
    "sink": ["", "host=db dbname=app"],
    "push_interval": ["", "soon", "-1", "nan", "inf"],
    "flush_interval": ["0", "1s"],
    "shutdown_timeout": ["-5", "ten"],
    "max_buffered_keys": ["1.5", "1e3", "0", "many"],
    "max_push_keys": ["0", "1.5"],
    "max_property_sets": ["0", ""],
    "max_event_names": ["0", "many", "1.5"],
    "max_properties": ["-1"],
    "backoff_initial": ["0"],
    "backoff_max": ["x"],
    "schedule_jitter": ["-0.1"],
    "claim_lease": ["0"],
    "max_batch_keys": ["0", "1.5", "many"],
    "prometheus_labels": ["plan,user_id", "a-b", "plan,plan"],
    "group_types": ["", "Account", "a,a", "a,b,c,d,e,f", "team-1"],
    "metrics_port": ["", "http", "65536", "9464.0"],
    "metrics_addr": ["", " "],
    "flusher": ["", "2", "maybe", "y"],
    "background": ["nope"],
    "spool_dir": ["/dev/null"],
    "spool_after": ["0", "soon"],
    "enabled": ["", "disabled", "2"],
    "dedupe_window": ["0", "1d", "-5", "2592001"],
}


def test_every_setting_is_covered_by_the_tables() -> None:
    names = {f.name for f in attrs.fields(Config)}
    assert set(SETTINGS) == names
    hooks = {"on_error", "before_track"}  # callables: no environment variable
    assert set(ENV_OK) == set(ENV_BAD) == set(ENVIRONMENT) == names - {"clock"} - hooks


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, (good, _) in SETTINGS.items() for v in good]
)
def test_every_setting_accepts_its_documented_values(name: str, value: object) -> None:
    config = Config.load({}, **{name: value})
    assert getattr(config, name) == (tuple(value) if isinstance(value, list) else value)


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, (_, (_, bad)) in SETTINGS.items() for v in bad]
)
def test_every_setting_refuses_a_wrong_value_naming_it(name: str, value: object) -> None:
    accepted = SETTINGS[name][1][0]
    with pytest.raises(ConfigurationError) as info:
        Config.load({}, **{name: value})
    text = str(info.value)
    assert text.startswith(f"{name}={value!r} is not accepted"), text
    assert f"accepted: {accepted}" in text


@pytest.mark.parametrize(
    ("name", "text", "value"), [(n, t, v) for n, spellings in ENV_OK.items() for t, v in spellings]
)
def test_every_environment_variable_accepts_its_spellings(
    name: str, text: str, value: object
) -> None:
    variable = ENVIRONMENT[name][0]
    assert variable == f"ANALYTICS_{name.upper()}"
    assert getattr(Config.load({variable: text}), name) == value


@pytest.mark.parametrize(("name", "text"), [(n, t) for n, texts in ENV_BAD.items() for t in texts])
def test_every_environment_variable_refuses_a_wrong_value_naming_it(name: str, text: str) -> None:
    variable = ENVIRONMENT[name][0]
    with pytest.raises(ConfigurationError) as info:
        Config.load({variable: text})
    message = str(info.value)
    assert message.startswith(f"{variable}={text!r} (setting {name}) is not accepted"), message
    assert "; accepted: " in message


def test_a_string_is_never_split_into_labels() -> None:
    with pytest.raises(ConfigurationError, match=r"prometheus_labels='user_id' is not accepted"):
        Analytics(background=False, prometheus_labels="user_id")


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
