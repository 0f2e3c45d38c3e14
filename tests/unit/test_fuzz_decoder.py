"""Fuzzing the decoder: whatever a client sends, decode_frame returns commands or
raises Disconnect(3501). Any other exception would escape to the WebSocket
layer and drop the connection without a close code."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.protocol import Disconnect, DisconnectCode, ErrorCode
from tidings.protocol.json_codec import decode_frame
from tidings.protocol.messages import BadCommand, Command, Method

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

METHODS = [m.value for m in Method]
FIELDS = [
    "channel",
    "token",
    "recover",
    "epoch",
    "offset",
    "data",
    "positioned",
    "recoverable",
    "join_leave",
    "subs",
    "name",
    "version",
    "limit",
    "since",
    "reverse",
    "method",
]

# Any character, surrogates included: a str from the WebSocket layer is valid
# UTF-8, but decode_frame must not depend on that.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)

tricky_strings = st.sampled_from(
    ["", "0", "1", "-1", "²", "١٢", "\uff11", "18446744073709551615", "18446744073709551616",
     "0" * 21, "1e3", " 1", "NaN", "chat:a", "$x", "a#b", "\x00", "\ud800"]
)  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    tricky_strings,
)

json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(FIELDS)), children, max_size=4
        ),
    ),
    max_leaves=20,
)

# A command body: mostly known field names, with values of any type.
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    st.fixed_dictionaries(
        {},
        optional={
            "channel": st.one_of(st.text(max_size=10), json_values),
            "offset": st.one_of(st.integers(min_value=-5, max_value=2**65), tricky_strings),
            "since": st.one_of(
                st.fixed_dictionaries({}, optional={"offset": json_values, "epoch": json_values}),
                json_values,
            ),
            "subs": st.dictionaries(
                st.text(max_size=5),
                st.one_of(
                    json_values, st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4)
                ),
                max_size=3,
            ),
            "data": json_values,
            "limit": st.integers(min_value=-(2**33), max_value=2**33),
        },
    ),
    json_values,
)

ids = st.one_of(
    st.integers(min_value=-2, max_value=2**33),
    st.just(2**32 - 1),
    scalars,
)


@st.composite
def command_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if draw(st.booleans()):
        obj["id"] = draw(ids)
    for method in draw(st.lists(st.sampled_from([*METHODS, "frobnicate", ""]), max_size=3)):
        obj[method] = draw(bodies)
    if draw(st.booleans()):
        obj[draw(st.text(max_size=6))] = draw(json_values)
    return obj


@st.composite
def nested(draw: st.DrawFn) -> str:
    """JSON nested up to twice past orjson's read limit (1024), in a payload or bare."""
    depth = draw(st.integers(min_value=1, max_value=2100))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"data":', "}]")]))
    inner = draw(st.sampled_from(["1", "[]", "{}", '"x"', "null"]))
    value = opener * depth + inner + closer * depth
    if draw(st.booleans()):
        # Sometimes leave it unbalanced.
        value = value[: draw(st.integers(min_value=0, max_value=len(value)))]
    method = draw(st.sampled_from(METHODS))
    return draw(
        st.sampled_from(
            [
                value,
                '{"id":1,"' + method + '":{"channel":"a","data":' + value + "}}",
                '{"id":1,"connect":{"subs":{"a":{"data":' + value + "}}}}",
                '{"id":' + value + ',"ping":{}}',
            ]
        )
    )


def check(frame: str) -> None:
    try:
        decoded = decode_frame(frame)
    except Disconnect as d:
        assert d.code == DisconnectCode.BAD_REQUEST
        return
    assert isinstance(decoded, list)
    for item in decoded:
        if isinstance(item, BadCommand):
            assert item.code in (ErrorCode.METHOD_NOT_FOUND, ErrorCode.BAD_REQUEST)
            assert 0 <= item.id < 2**32  # 0: a bad send, which gets no reply
            assert item.message
            continue
        assert isinstance(item, Command)
        assert 0 <= item.id < 2**32
        if item.method is None:
            assert item.request is None and item.id == 0
        else:
            assert item.id > 0 or item.method is Method.SEND
            assert (
                type(item.request).__name__.lower().startswith(item.method.value.replace("_", ""))
            )
            # Payloads are kept as JSON that parses again.
            for field in ("data",):
                raw = getattr(item.request, field, None)
                if raw is not None:
                    orjson.loads(raw)


@FUZZ
@given(any_text)
def test_arbitrary_text(frame: str) -> None:
    check(frame)


@FUZZ
@given(st.lists(any_text, max_size=4))
def test_arbitrary_lines(lines: list[str]) -> None:
    check("\n".join(lines))


@FUZZ
@given(json_values, st.booleans())
def test_arbitrary_json_values(value: Any, ascii_only: bool) -> None:
    check(json.dumps(value, ensure_ascii=ascii_only))


@FUZZ
@given(st.lists(command_objects(), min_size=1, max_size=4), st.booleans())
def test_command_shaped_objects(objs: list[dict[str, Any]], ascii_only: bool) -> None:
    check("\n".join(json.dumps(o, ensure_ascii=ascii_only) for o in objs))


@FUZZ
@given(command_objects(), st.data())
def test_command_shaped_objects_mangled(obj: dict[str, Any], data: st.DataObject) -> None:
    text = json.dumps(obj)
    # Cut, or splice in a random character: mostly malformed JSON, sometimes not.
    position = data.draw(st.integers(min_value=0, max_value=len(text)))
    if data.draw(st.booleans()):
        text = text[:position]
    else:
        text = text[:position] + data.draw(st.characters(codec=None)) + text[position:]
    check(text)


@settings(max_examples=100, deadline=None)
@given(nested())
def test_deep_nesting(frame: str) -> None:
    check(frame)


def test_deep_nesting_extremes() -> None:
    for depth in (254, 255, 1022, 1023, 1024, 1025, 30_000, 100_000):
        for opener, closer in (("[", "]"), ('{"a":', "}")):
            value = opener * depth + closer * depth
            check(value)
            check('{"id":1,"publish":{"channel":"a","data":' + value + "}}")


# Strings that look numeric to str.isdigit(): every Unicode digit and number.
digit_strings = st.one_of(
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=22),
    st.text("0123456789", min_size=1, max_size=22),
    any_text,
)


@FUZZ
@given(digit_strings, st.sampled_from(["subscribe", "history", "connect"]))
def test_uint64_string_fields(text: str, method: str) -> None:
    body: dict[str, Any] = {
        "subscribe": {"channel": "a", "offset": text},
        "history": {"channel": "a", "since": {"offset": text}},
        "connect": {"subs": {"a": {"offset": text}}},
    }[method]
    frame = json.dumps({"id": 1, method: body}, ensure_ascii=False)
    if any("\ud800" <= c <= "\udfff" for c in text):
        check(frame)  # a lone surrogate is not JSON text: 3501
        return
    [item] = decode_frame(frame)
    if text.isascii() and text.isdigit() and int(text) < 2**64:
        assert isinstance(item, Command)
    else:
        assert item == BadCommand(1, ErrorCode.BAD_REQUEST, "wrong type of field 'offset'")
