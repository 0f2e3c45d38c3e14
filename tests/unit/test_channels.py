"""Channel names: namespaces, the '#' user boundary, '$' private channels, refusals."""

from __future__ import annotations

import pytest

from tidings import Settings
from tidings.brokers.memory import MemoryBroker
from tidings.config import DEFAULT_NAMESPACE, DEFAULT_NAMESPACES, NamespaceOptions
from tidings.hub import hub as hub_module
from tidings.hub.channels import parse_channel, personal_channel
from tidings.protocol import ErrorCode, ProtocolError

SETTINGS = Settings(
    secret="s",
    namespaces={
        "room": NamespaceOptions(presence=True),
        "strict": NamespaceOptions(allow_user_limited_channels=False),
    },
)


def refused(name: str, code: ErrorCode, settings: Settings = SETTINGS) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_channel(name, settings)
    assert info.value.code == code


def test_channel_without_namespace() -> None:
    channel = parse_channel("news", SETTINGS)
    assert channel.name == "news"
    assert channel.namespace == ""
    assert channel.options == DEFAULT_NAMESPACE
    assert not channel.private
    assert channel.allowed_users is None
    assert channel.user_allowed("") and channel.user_allowed("anyone")


def test_builtin_and_configured_namespaces() -> None:
    chat = parse_channel("chat:lobby", SETTINGS)
    assert chat.namespace == "chat"
    assert chat.options == DEFAULT_NAMESPACES["chat"]
    room = parse_channel("room:1", SETTINGS)
    assert room.namespace == "room"
    assert room.options.presence
    # Only the first colon separates the namespace.
    deeper = parse_channel("chat:a:b:c", SETTINGS)
    assert deeper.namespace == "chat"
    assert deeper.name == "chat:a:b:c"


def test_configured_namespace_overrides_builtin() -> None:
    settings = Settings(secret="s", namespaces={"chat": NamespaceOptions(history_size=1)})
    assert parse_channel("chat:x", settings).options == NamespaceOptions(history_size=1)


def test_user_boundary() -> None:
    one = parse_channel("notifications#alice", SETTINGS)
    assert one.allowed_users == frozenset({"alice"})
    assert one.user_allowed("alice")
    assert not one.user_allowed("bob")
    assert not one.user_allowed("")
    two = parse_channel("chat:dm#alice,bob", SETTINGS)
    assert two.namespace == "chat"
    assert two.allowed_users == frozenset({"alice", "bob"})
    # The last '#' is the boundary; empty names between commas are dropped.
    last = parse_channel("a#b#c,,d,", SETTINGS)
    assert last.allowed_users == frozenset({"c", "d"})
    nobody = parse_channel("secret#", SETTINGS)
    assert nobody.allowed_users == frozenset()
    assert not nobody.user_allowed("") and not nobody.user_allowed("x")


def test_user_boundary_can_be_turned_off() -> None:
    channel = parse_channel("strict:x#alice", SETTINGS)
    assert channel.allowed_users is None
    assert channel.user_allowed("bob")


def test_private_channels() -> None:
    channel = parse_channel("$secret", SETTINGS)
    assert channel.private
    assert channel.namespace == ""
    assert channel.name == "$secret"
    private_ns = parse_channel("$chat:x#alice", SETTINGS)
    assert private_ns.private
    assert private_ns.namespace == "chat"
    assert private_ns.allowed_users == frozenset({"alice"})
    # '$' elsewhere is an ordinary character.
    assert not parse_channel("a$b", SETTINGS).private


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a b",
        "tab\there",
        "new\nline",
        "nul\x00",
        "del\x7f",
        "esc\x1b",
        "\u3000wide",
        " ",
        "x\r",
    ],
)
def test_invalid_names(name: str) -> None:
    refused(name, ErrorCode.BAD_REQUEST)


def test_length_is_counted_in_bytes() -> None:
    assert parse_channel("a" * 255, SETTINGS).name == "a" * 255
    refused("a" * 256, ErrorCode.BAD_REQUEST)
    assert parse_channel("é" * 127, SETTINGS)  # 254 bytes
    refused("é" * 128, ErrorCode.BAD_REQUEST)  # 256 bytes
    short = Settings(secret="s", max_channel_length=3)
    refused("abcd", ErrorCode.BAD_REQUEST, short)


@pytest.mark.parametrize("name", ["nope:x", "$nope:x", "NOPE:x", "chat2:x", "nope:"])
def test_unknown_namespace(name: str) -> None:
    refused(name, ErrorCode.UNKNOWN_CHANNEL)


def test_invalid_name_checked_before_namespace() -> None:
    refused("nope:a b", ErrorCode.BAD_REQUEST)


def test_personal_channel() -> None:
    name = personal_channel("alice")
    assert name == "notifications#alice"
    assert parse_channel(name, SETTINGS).allowed_users == frozenset({"alice"})


def test_the_hub_keeps_resolved_channels_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "CHANNEL_CACHE_SIZE", 8)
    hub = hub_module.Hub(Settings(secret="s" * 32), MemoryBroker())
    assert hub.channel("chat:a") is hub.channel("chat:a")  # resolved once
    for n in range(100):  # clients naming channels at random cannot grow it without end
        hub.channel(f"chat:{n}")
        assert len(hub._channels_by_name) <= 8
    # A refused name is never kept: it is refused again, every time.
    for _ in range(2):
        with pytest.raises(ProtocolError) as error:
            hub.channel("nope:x")
        assert error.value.code == ErrorCode.UNKNOWN_CHANNEL
    assert hub.channel("chat:b").options == hub.channel("chat:c").options
