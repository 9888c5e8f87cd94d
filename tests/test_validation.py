"""Bad input raises in the caller, with a message naming the value and what is accepted."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from enum import Enum, IntEnum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics_sdk import Analytics
from analytics_sdk.events import (
    MAX_NAME_LENGTH,
    MAX_VALUE,
    validate_event_name,
    validate_properties,
)


class Event(str, Enum):
    SIGNUP = "signup"


class Numbered(IntEnum):
    ONE = 1


@pytest.fixture
def client(clock) -> Analytics:  # type: ignore[no-untyped-def]
    with Analytics(background=False, clock=clock) as c:
        yield c


@pytest.mark.parametrize(
    ("event", "error", "message"),
    [
        ("", ValueError, r"event name '' has 0 characters; accepted: 1 to 200"),
        ("x" * (MAX_NAME_LENGTH + 1), ValueError, "has 201 characters"),
        ("page\nview", ValueError, r"'page\\nview' contains control"),
        ("tab\tname", ValueError, "control"),
        (" page_view", ValueError, "leading or trailing whitespace"),
        (42, TypeError, "event name 42 is of type int; accepted: str or a str-valued Enum"),
        (Numbered.ONE, TypeError, "is of type int"),
        (None, TypeError, "event name None is of type NoneType"),
        (["a"], TypeError, r"event name \['a'\] is of type list"),
    ],
)
def test_bad_event_names(client: Analytics, event: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        client.track(event)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("user_id", "error", "message"),
    [
        (
            123,
            TypeError,
            r"user_id 123 is of type int; accepted: str \(convert ids with str\(user_id\)\)",
        ),
        ("", ValueError, "user_id '' has 0 characters"),
        ("u\x00", ValueError, "control"),
        ("u" * 257, ValueError, "accepted: 1 to 256"),
    ],
)
def test_bad_user_ids(client: Analytics, user_id: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        client.track("x", user_id=user_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("properties", "error", "message"),
    [
        ([("a", "b")], TypeError, "accepted: a mapping of str to str, int or bool"),
        ({1: "a"}, TypeError, "property key 1 is of type int; accepted: str"),
        (
            {"a": 1.5},
            TypeError,
            r"property 'a' has value 1.5 of type float; accepted: str, int or bool \(properties are a flat mapping\)",
        ),
        ({"a": {"nested": 1}}, TypeError, "of type dict"),
        ({"a": None}, TypeError, "of type NoneType"),
        ({"": "x"}, ValueError, "property key '' has 0 characters"),
        ({"a": "x\ny"}, ValueError, "printable"),
        ({f"k{i}": "v" for i in range(17)}, ValueError, "accepted: at most 16"),
    ],
)
def test_bad_properties(client: Analytics, properties: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        client.track("x", properties=properties)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, TypeError, "value True is of type bool; accepted: an int from 1 to"),
        (0, ValueError, "value 0 is out of range"),
        (-3, ValueError, "value -3 is out of range"),
        (1.0, TypeError, "value 1.0 is of type float"),
        (MAX_VALUE + 1, ValueError, "out of range"),
        ("1", TypeError, "of type str"),
    ],
)
def test_bad_values(client: Analytics, value: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        client.track("x", value=value)  # type: ignore[arg-type]


def test_bad_timestamps(client: Analytics, clock) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="is naive; accepted: a timezone-aware datetime"):
        client.track("x", timestamp=datetime(2026, 1, 1))
    future = datetime.fromtimestamp(clock.time(), timezone.utc) + timedelta(hours=1)
    with pytest.raises(ValueError, match="3600 s in the future; accepted: up to 300 s"):
        client.track("x", timestamp=future)
    with pytest.raises(TypeError, match="timestamp 1700000000 is of type int"):
        client.track("x", timestamp=1_700_000_000)  # type: ignore[arg-type]


def test_rejected_calls_count_nothing(client: Analytics) -> None:
    for bad in ({"a": 1.5}, {1: 2}):
        with pytest.raises(TypeError):
            client.track("x", properties=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.track("x", value=True)
    assert client.count("x") == 0


def test_cached_names_are_still_checked_per_type(client: Analytics) -> None:
    client.track("signup")
    client.track(Event.SIGNUP)
    assert client.count("signup") == 2
    assert client.count(Event.SIGNUP) == 2  # type: ignore[arg-type]


def test_property_values_normalise_to_strings(client: Analytics) -> None:
    client.track("x", properties={"flag": True, "n": 1})
    client.track("x", properties={"flag": "true", "n": "1"})
    client.track("x", properties={"n": True})  # 1 == True must not alias "1"
    assert client.count("x", properties={"flag": True}) == 2
    assert client.count("x", properties={"n": 1}) == 2
    assert client.count("x", properties={"n": "true"}) == 1


# Printable text without surrounding whitespace: always a valid event name.
names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")),
    min_size=1,
    max_size=MAX_NAME_LENGTH,
)


@given(names)
def test_printable_names_are_accepted_unchanged(name: str) -> None:
    assert validate_event_name(name) == name


@given(st.text(min_size=1, max_size=50))
def test_names_are_accepted_iff_printable_and_trimmed(name: str) -> None:
    acceptable = name.isprintable() and name == name.strip()
    if acceptable:
        assert validate_event_name(name) == name
    else:
        with pytest.raises(ValueError, match="event name"):
            validate_event_name(name)


printable = st.text(min_size=1, max_size=10).filter(str.isprintable)
scalar = st.one_of(st.booleans(), st.integers(), printable)


@given(st.dictionaries(printable, scalar, max_size=8))
def test_valid_properties_normalise_sorted_to_str(props: dict[str, object]) -> None:
    result = validate_properties(props, 16)
    assert [k for k, _ in result] == sorted(props)
    for key, text in result:
        original = props[key]
        expected = (
            ("true" if original else "false") if isinstance(original, bool) else str(original)
        )
        assert text == expected


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.floats() | st.none() | st.lists(st.integers()),
        min_size=1,
        max_size=4,
    )
)
def test_non_scalar_values_are_rejected(props: dict[str, object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        validate_properties(props, 16)
