"""Key encoding: round trips and injectivity for any text, separators and unicode included."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics_sdk.keys import (
    day_of,
    decode_hour_key,
    decode_user_key,
    encode_hour_key,
    encode_user_key,
    escape,
    hour_of,
    hour_start,
    unescape,
)

# Text biased toward the characters that broke the seed's keys.
tricky = st.text(
    alphabet=st.sampled_from(list(":{}|=,%\n\r ab7é日🎉")) | st.characters(), max_size=30
)
properties = st.dictionaries(tricky, tricky, max_size=5).map(lambda d: tuple(sorted(d.items())))
hours = st.integers(min_value=-(10**6), max_value=10**7)


@given(tricky)
def test_escape_round_trips(text: str) -> None:
    assert unescape(escape(text)) == text


@given(tricky)
def test_escaped_text_has_no_separators(text: str) -> None:
    assert not set(escape(text)) & set("|=,:{}\n\r")


@given(tricky, properties, hours)
def test_hour_key_round_trips(event: str, props: tuple[tuple[str, str], ...], hour: int) -> None:
    key = (event, props, hour)
    assert decode_hour_key(encode_hour_key(key)) == key


@given(tricky, tricky, hours)
def test_user_key_round_trips(event: str, user: str, day: int) -> None:
    key = (event, user, day)
    assert decode_user_key(encode_user_key(key)) == key


@given(st.tuples(tricky, properties, hours), st.tuples(tricky, properties, hours))
def test_distinct_hour_keys_never_collide(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    if a != b:
        assert encode_hour_key(a) != encode_hour_key(b)


def test_the_seeds_colon_split_case_stays_intact() -> None:
    key = ("checkout:step:2", (("path", "a|b"), ("q", "x=1,y=2")), 500_000)
    text = encode_hour_key(key)
    assert text.count("|") == 2
    assert decode_hour_key(text) == key


@pytest.mark.parametrize("bad", ["a|b", "a|b|c|d", "a|x|notanint", "a|noequals|1"])
def test_malformed_keys_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        decode_hour_key(bad)


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(timezone.utc),
    )
)
def test_hour_buckets_contain_their_moment(moment: datetime) -> None:
    start = hour_start(hour_of(moment))
    assert start <= moment < start + timedelta(hours=1)


def test_hour_of_respects_offsets() -> None:
    paris = timezone(timedelta(hours=1))
    assert hour_of(datetime(2026, 1, 1, 1, 30, tzinfo=paris)) == hour_of(
        datetime(2026, 1, 1, 0, 30, tzinfo=timezone.utc)
    )
    assert day_of(date(1970, 1, 2)) == 1
