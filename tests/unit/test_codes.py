"""Error and disconnect codes: messages, the temporary flag, the reconnect rule."""

from __future__ import annotations

import pytest

from tidings.protocol import Disconnect, DisconnectCode, ErrorCode, ProtocolError
from tidings.protocol.codes import DISCONNECT_REASONS, ERROR_MESSAGES, TEMPORARY_ERRORS


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (1000, True),
        (1007, True),
        (1009, True),
        (3000, True),
        (3005, True),
        (3008, True),
        (3012, True),
        (3499, True),
        (3500, False),
        (3501, False),
        (3502, False),
        (3999, False),
        (4000, True),
        (4499, True),
        (4500, False),
        (4999, False),
        (5000, True),
    ],
)
def test_reconnect_rule(code: int, reconnect: bool) -> None:
    assert Disconnect(code, "x").reconnect is reconnect


def test_terminal_codes_are_the_3500_range() -> None:
    for code in DisconnectCode:
        assert Disconnect.of(code).reconnect is (code < 3500)


def test_every_code_has_a_text() -> None:
    assert set(DISCONNECT_REASONS) == set(DisconnectCode)
    assert set(ERROR_MESSAGES) == set(ErrorCode)
    assert all(DISCONNECT_REASONS.values()) and all(ERROR_MESSAGES.values())


def test_centrifugo_numbers() -> None:
    assert (ErrorCode.UNKNOWN_CHANNEL, ErrorCode.PERMISSION_DENIED) == (102, 103)
    assert (ErrorCode.METHOD_NOT_FOUND, ErrorCode.LIMIT_EXCEEDED) == (104, 106)
    assert (ErrorCode.BAD_REQUEST, ErrorCode.TOKEN_EXPIRED) == (107, 109)
    assert ErrorCode.TOO_MANY_REQUESTS == 111
    assert (DisconnectCode.EXPIRED, DisconnectCode.SLOW, DisconnectCode.NO_PONG) == (
        3005,
        3008,
        3012,
    )
    assert (DisconnectCode.INVALID_TOKEN, DisconnectCode.BAD_REQUEST, DisconnectCode.STALE) == (
        3500,
        3501,
        3502,
    )


def test_disconnect_of() -> None:
    d = Disconnect.of(DisconnectCode.SLOW)
    assert (d.code, d.reason) == (3008, "slow")
    assert type(d.code) is int
    custom = Disconnect.of(DisconnectCode.BAD_REQUEST, "connect first")
    assert (custom.code, custom.reason) == (3501, "connect first")
    assert str(custom) == "disconnect 3501: connect first"
    assert isinstance(custom, Exception)


def test_protocol_error_of() -> None:
    for code in ErrorCode:
        error = ProtocolError.of(code)
        assert error.code == int(code)
        assert error.message == ERROR_MESSAGES[code]
        assert error.temporary is (code in TEMPORARY_ERRORS)
    assert TEMPORARY_ERRORS == {ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS}
    error = ProtocolError.of(ErrorCode.NOT_AVAILABLE, "history is off")
    assert str(error) == "error 108: history is off"
    assert not ProtocolError(107, "x").temporary
