"""Our Protobuf schema of the Centrifugo client protocol v2, built at import time.

The field numbers are the protocol's documented ones (``client.proto`` in the
centrifugal/protocol repository); the table below is written here, and only
covers what Tidings speaks. Building the descriptors at run time lets the
``protobuf`` library (its C implementation) do the wire parsing and
serialising, with no code generation step and no generated files.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "centrifugal.centrifuge.protocol"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

# message -> [(field name, number, type)]. A type is a scalar name, a message
# name, "repeated Name", or "map<string, V>".
SCHEMA: dict[str, list[tuple[str, int, str]]] = {
    "Error": [("code", 1, "uint32"), ("message", 2, "string"), ("temporary", 3, "bool")],
    "Command": [
        ("id", 1, "uint32"),
        ("connect", 4, "ConnectRequest"),
        ("subscribe", 5, "SubscribeRequest"),
        ("unsubscribe", 6, "UnsubscribeRequest"),
        ("publish", 7, "PublishRequest"),
        ("presence", 8, "PresenceRequest"),
        ("presence_stats", 9, "PresenceStatsRequest"),
        ("history", 10, "HistoryRequest"),
        ("ping", 11, "PingRequest"),
        ("send", 12, "SendRequest"),
        ("rpc", 13, "RPCRequest"),
        ("refresh", 14, "RefreshRequest"),
        ("sub_refresh", 15, "SubRefreshRequest"),
    ],
    "Reply": [
        ("id", 1, "uint32"),
        ("error", 2, "Error"),
        ("push", 4, "Push"),
        ("connect", 5, "ConnectResult"),
        ("subscribe", 6, "SubscribeResult"),
        ("unsubscribe", 7, "UnsubscribeResult"),
        ("publish", 8, "PublishResult"),
        ("presence", 9, "PresenceResult"),
        ("presence_stats", 10, "PresenceStatsResult"),
        ("history", 11, "HistoryResult"),
        ("ping", 12, "PingResult"),
        ("rpc", 13, "RPCResult"),
        ("refresh", 14, "RefreshResult"),
        ("sub_refresh", 15, "SubRefreshResult"),
    ],
    "Push": [
        ("id", 1, "int64"),
        ("channel", 2, "string"),
        ("pub", 4, "Publication"),
        ("join", 5, "Join"),
        ("leave", 6, "Leave"),
        ("unsubscribe", 7, "Unsubscribe"),
        ("message", 8, "Message"),
        ("subscribe", 9, "Subscribe"),
        ("disconnect", 11, "Disconnect"),
    ],
    "ClientInfo": [
        ("user", 1, "string"),
        ("client", 2, "string"),
        ("conn_info", 3, "bytes"),
        ("chan_info", 4, "bytes"),
    ],
    "Publication": [
        ("data", 4, "bytes"),
        ("info", 5, "ClientInfo"),
        ("offset", 6, "uint64"),
        ("tags", 7, "map<string, string>"),
        ("time", 9, "int64"),
    ],
    "Join": [("info", 1, "ClientInfo")],
    "Leave": [("info", 1, "ClientInfo")],
    "Unsubscribe": [("code", 2, "uint32"), ("reason", 3, "string")],
    "Subscribe": [
        ("recoverable", 1, "bool"),
        ("epoch", 4, "string"),
        ("offset", 5, "uint64"),
        ("positioned", 6, "bool"),
        ("data", 7, "bytes"),
    ],
    "Message": [("data", 1, "bytes")],
    "Disconnect": [("code", 1, "uint32"), ("reason", 2, "string"), ("reconnect", 3, "bool")],
    "ConnectRequest": [
        ("token", 1, "string"),
        ("data", 2, "bytes"),
        ("subs", 3, "map<string, SubscribeRequest>"),
        ("name", 4, "string"),
        ("version", 5, "string"),
    ],
    "ConnectResult": [
        ("client", 1, "string"),
        ("version", 2, "string"),
        ("expires", 3, "bool"),
        ("ttl", 4, "uint32"),
        ("data", 5, "bytes"),
        ("subs", 6, "map<string, SubscribeResult>"),
        ("ping", 7, "uint32"),
        ("pong", 8, "bool"),
        ("session", 9, "string"),
        ("node", 10, "string"),
    ],
    "RefreshRequest": [("token", 1, "string")],
    "RefreshResult": [
        ("client", 1, "string"),
        ("version", 2, "string"),
        ("expires", 3, "bool"),
        ("ttl", 4, "uint32"),
    ],
    "SubscribeRequest": [
        ("channel", 1, "string"),
        ("token", 2, "string"),
        ("recover", 3, "bool"),
        ("epoch", 6, "string"),
        ("offset", 7, "uint64"),
        ("data", 8, "bytes"),
        ("positioned", 9, "bool"),
        ("recoverable", 10, "bool"),
        ("join_leave", 11, "bool"),
    ],
    "SubscribeResult": [
        ("expires", 1, "bool"),
        ("ttl", 2, "uint32"),
        ("recoverable", 3, "bool"),
        ("epoch", 6, "string"),
        ("publications", 7, "repeated Publication"),
        ("recovered", 8, "bool"),
        ("offset", 9, "uint64"),
        ("positioned", 10, "bool"),
        ("data", 11, "bytes"),
        ("was_recovering", 12, "bool"),
    ],
    "SubRefreshRequest": [("channel", 1, "string"), ("token", 2, "string")],
    "SubRefreshResult": [("expires", 1, "bool"), ("ttl", 2, "uint32")],
    "UnsubscribeRequest": [("channel", 1, "string")],
    "UnsubscribeResult": [],
    "PublishRequest": [("channel", 1, "string"), ("data", 2, "bytes")],
    "PublishResult": [],
    "PresenceRequest": [("channel", 1, "string")],
    "PresenceResult": [("presence", 1, "map<string, ClientInfo>")],
    "PresenceStatsRequest": [("channel", 1, "string")],
    "PresenceStatsResult": [("num_clients", 1, "uint32"), ("num_users", 2, "uint32")],
    "StreamPosition": [("offset", 1, "uint64"), ("epoch", 2, "string")],
    "HistoryRequest": [
        ("channel", 1, "string"),
        ("limit", 7, "int32"),
        ("since", 8, "StreamPosition"),
        ("reverse", 9, "bool"),
    ],
    "HistoryResult": [
        ("publications", 1, "repeated Publication"),
        ("epoch", 2, "string"),
        ("offset", 3, "uint64"),
    ],
    "PingRequest": [],
    "PingResult": [],
    "RPCRequest": [("data", 1, "bytes"), ("method", 2, "string")],
    "RPCResult": [("data", 1, "bytes")],
    "SendRequest": [("data", 1, "bytes")],
}


def _entry_name(field: str) -> str:
    return "".join(part.title() for part in field.split("_")) + "Entry"


def _add_field(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: str) -> None:
    field = message.field.add(name=name, number=number, json_name=name)
    field.label = _F.LABEL_OPTIONAL
    if kind.startswith("map<"):
        key_kind, value_kind = (k.strip() for k in kind[4:-1].split(","))
        entry = message.nested_type.add(name=_entry_name(name))
        entry.options.map_entry = True
        _add_field(entry, "key", 1, key_kind)
        _add_field(entry, "value", 2, value_kind)
        field.label = _F.LABEL_REPEATED
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{message.name}.{entry.name}"
        return
    if kind.startswith("repeated "):
        field.label = _F.LABEL_REPEATED
        kind = kind.removeprefix("repeated ")
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{kind}"


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="tidings/client.proto", package=PACKAGE, syntax="proto3"
    )
    for name, fields in SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            _add_field(message, field_name, number, kind)
    # A private pool: the SDKs' generated modules may register the same names.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in SCHEMA
    }


MESSAGES = _build()
Command: Any = MESSAGES["Command"]
Reply: Any = MESSAGES["Reply"]
