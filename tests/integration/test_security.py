"""The threat list of docs/security.md, tried against a running server.

Every attack runs while a well-behaved bystander is connected and subscribed
on the same server; it receives a publication before and after the attack,
and still answers: one client's attack never disturbs the others.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cent import AsyncClient, PublishRequest
from cent.exceptions import CentUnauthorizedError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.typing import Origin

from tests.conftest import SECRET, Running, running_server, test_settings, wait_for
from tests.integration.wsclient import WSClient, ws_client
from tidings import Settings
from tidings.auth import make_connection_token, make_subscription_token

# --- helpers --------------------------------------------------------------------


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Test settings on the memory broker: these attacks are on the hub, not the broker."""
    return test_settings(tmp_path, broker_url="memory://", **overrides)


_sent = iter(range(1_000_000))


async def delivered(server: Running, client: WSClient, channel: str = "news") -> None:
    data = {"n": next(_sent)}
    await server.tidings.publish(channel, data)
    assert (await client.publication(channel, data))["data"] == data


@asynccontextmanager
async def bystander(server: Running, token: str | None = None) -> AsyncIterator[WSClient]:
    """A good client, subscribed to news, that receives before, during and after."""
    async with ws_client(server.ws_url) as good:
        await good.connect(token or server.token("bystander"))
        await good.subscribe("news")
        await delivered(server, good)
        yield good
        await delivered(server, good)
        assert await good.ok("ping") == {}
        assert good.is_open


async def closed_with(client: WSClient, code: int, *, in_band: bool = True) -> None:
    assert await client.closed() == code
    if in_band:  # the disconnect push precedes the close frame
        push = client.disconnect_push()
        assert push is not None and push["code"] == code, push


async def refused_at_connect(server: Running, token: str, code: int = 3500) -> None:
    async with ws_client(server.ws_url) as bad:
        await bad.send({"id": 1, "connect": {"token": token}})
        await closed_with(bad, code)
        assert not [m for m in bad.unclaimed if "connect" in m]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT made by hand, as an attacker would: PyJWT refuses to make these."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(user: str = "mallory", ttl: int = 600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user, "iat": now, "exp": now + ttl, **extra}


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(settings_for(tmp_path)) as running:
        yield running


async def scrape(server: Running) -> str:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        return (await http.get("/metrics")).text


# --- forged, alg=none, confused, mis-addressed and untimely tokens -------------------


async def test_alg_none_is_refused(server: Running) -> None:
    async with bystander(server):
        for alg in ("none", "None", "NONE"):
            await refused_at_connect(server, forge({"alg": alg, "typ": "JWT"}, claims(), None))
        # Nor may it open a private channel.
        async with ws_client(server.ws_url) as bad:
            await bad.connect(server.token("mallory"))
            token = forge({"alg": "none"}, claims(channel="$chat:vault"), None)
            reply = await bad.call("subscribe", {"channel": "$chat:vault", "token": token})
            assert reply["error"]["code"] == 103
    assert "$chat:vault" not in server.tidings.hub.channels


async def test_bad_signature_is_refused(server: Running) -> None:
    async with bystander(server):
        head, payload, signature = server.token("mallory").split(".")
        tampered = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
        await refused_at_connect(server, f"{head}.{payload}.{tampered}")
        # A payload swapped under a valid signature: claiming to be someone else.
        other = b64url(json.dumps(claims("alice")).encode())
        await refused_at_connect(server, f"{head}.{other}.{signature}")
        # Signed with a key that is not the server's.
        await refused_at_connect(server, make_connection_token("k" * 40, "alice"))
    assert "alice" not in server.tidings.hub.users


@pytest.mark.parametrize("pinned", [["RS256"], ["HS256", "RS256"]])
async def test_hs_rs_confusion_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, pinned: list[str]
) -> None:
    public = pem(rsa_key)
    settings = settings_for(tmp_path, jwt_algorithms=pinned, jwt_rsa_public_key=public)
    async with running_server(settings) as server:
        good = jwt.encode(claims("bystander"), rsa_key, algorithm="RS256")
        async with bystander(server, good):
            # The public key is public: the attacker signs HS256 with it as the secret.
            for secret in (public, public.strip()):
                await refused_at_connect(
                    server, forge({"alg": "HS256", "typ": "JWT"}, claims(), secret.encode())
                )
            assert server.tidings.hub.metrics.auth_failures == 2


async def test_wrong_audience_or_issuer_is_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, jwt_audience="tidings", jwt_issuer="https://id.example")
    async with running_server(settings) as server:
        right: dict[str, Any] = {"aud": "tidings", "iss": "https://id.example"}
        async with bystander(server, jwt.encode(claims("bystander", **right), SECRET)):
            wrongs: list[dict[str, Any]] = [
                {"aud": "another-service", "iss": "https://id.example"},
                {"aud": "tidings", "iss": "https://evil.example"},
                {"iss": "https://id.example"},  # no aud
                {"aud": "tidings"},  # no iss
            ]
            for wrong in wrongs:
                await refused_at_connect(server, jwt.encode(claims(**wrong), SECRET))
            # The subscription tokens follow the same rules.
            async with ws_client(server.ws_url) as client:
                await client.connect(jwt.encode(claims("erin", **right), SECRET))
                bad = jwt.encode(claims("erin", channel="$chat:x", aud="other"), SECRET)
                reply = await client.call("subscribe", {"channel": "$chat:x", "token": bad})
                assert reply["error"]["code"] == 103
                ok = jwt.encode(claims("erin", channel="$chat:x", **right), SECRET)
                assert "subscribe" in await client.call(
                    "subscribe", {"channel": "$chat:x", "token": ok}
                )


async def test_not_before_in_the_future_is_refused(server: Running) -> None:
    async with bystander(server):
        await refused_at_connect(server, jwt.encode(claims(nbf=int(time.time()) + 3600), SECRET))


async def test_missing_exp_is_refused_when_required(tmp_path: Path) -> None:
    async with running_server(settings_for(tmp_path, jwt_require_exp=True)) as server:
        async with bystander(server):
            no_exp = {"sub": "mallory", "iat": int(time.time())}
            await refused_at_connect(server, jwt.encode(no_exp, SECRET))
            await refused_at_connect(server, make_connection_token(SECRET, "mallory", ttl=None))
    # Off by default, as Centrifugo: a token without exp never expires.
    async with running_server(settings_for(tmp_path)) as server, ws_client(server.ws_url) as c:
        result = await c.connect(make_connection_token(SECRET, "carol", ttl=None))
        assert "expires" not in result or result["expires"] is False


async def test_expired_token_gets_109_and_may_retry(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as late:
        reply = await late.call("connect", {"token": server.token("late", ttl=-30)})
        assert reply["error"] == {"code": 109, "message": "token expired"}
        assert late.is_open  # the SDK gets a new token and connects on the same socket
        assert (await late.connect(server.token("late")))["client"]


async def test_refresh_cannot_change_identity(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await bad.connect(server.token("mallory"))
        await bad.send({"id": 9, "refresh": {"token": server.token("alice")}})
        await closed_with(bad, 3500)


async def test_static_es256_key(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    settings = settings_for(tmp_path, jwt_algorithms=["ES256"], jwt_ec_public_key=pem(ec_key))
    async with running_server(settings) as server:
        good = jwt.encode(claims("bystander"), ec_key, algorithm="ES256")
        async with bystander(server, good):
            stranger = ec.generate_private_key(ec.SECP256R1())
            await refused_at_connect(server, jwt.encode(claims(), stranger, algorithm="ES256"))
            await refused_at_connect(server, server.token("mallory"))  # HS256 is not pinned


# --- JWKS ---------------------------------------------------------------------------


class JWKSServer:
    """Serves a JWKS document on a loopback port; counts requests; can be made to fail."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.requests = 0
        self.url = ""

    def publish(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> None:
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self.keys.append({**jwk, "kid": kid, "use": "sig"})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            body = orjson.dumps({"keys": self.keys}) if self.status == 200 else b"down"
            head = (
                f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[JWKSServer]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        async with server:
            yield self


def signed(key: Any, alg: str, kid: str, user: str = "mallory") -> str:
    return jwt.encode(claims(user), key, algorithm=alg, headers={"kid": kid})


async def test_jwks_keys_and_bounded_refetch_on_unknown_kid(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks = JWKSServer()
    jwks.publish(rsa_key, "r1")
    jwks.publish(ec_key, "e1")
    async with jwks.running():
        settings = settings_for(
            tmp_path,
            jwt_algorithms=["RS256", "ES256"],
            jwt_jwks_url=jwks.url,
            jwt_jwks_refresh_interval=60,
        )
        async with running_server(settings) as server:
            async with bystander(server, signed(rsa_key, "RS256", "r1", "bystander")):
                assert jwks.requests == 1
                async with ws_client(server.ws_url) as ok:
                    await ok.connect(signed(ec_key, "ES256", "e1", "erin"))
                # Made-up key ids: refused, and they cannot make the server hammer the JWKS.
                for _ in range(20):
                    await refused_at_connect(server, signed(rsa_key, "RS256", secrets.token_hex(8)))
                # A known kid over a signature by another key.
                stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                await refused_at_connect(server, signed(stranger, "RS256", "r1"))
                # An EC key named for an RS256 token.
                await refused_at_connect(server, signed(ec_key, "ES256", "r1"))
                assert jwks.requests == 1


async def test_jwks_rotation_and_outage(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks = JWKSServer()
    jwks.publish(rsa_key, "old")
    async with jwks.running():
        settings = settings_for(
            tmp_path, jwt_algorithms=["RS256"], jwt_jwks_url=jwks.url, jwt_jwks_refresh_interval=0
        )
        async with running_server(settings) as server:
            async with bystander(server, signed(rsa_key, "RS256", "old", "bystander")):
                # The identity provider rotates: a token with the new kid fetches the set again.
                rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                jwks.publish(rotated, "new")
                async with ws_client(server.ws_url) as client:
                    await client.connect(signed(rotated, "RS256", "new", "frank"))
                assert jwks.requests == 2
                # The JWKS is down and the kid unknown: a temporary error, the socket stays.
                jwks.status = 503
                later = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                async with ws_client(server.ws_url) as client:
                    reply = await client.call("connect", {"token": signed(later, "RS256", "k3")})
                    assert reply["error"] == {
                        "code": 100,
                        "message": "token keys unavailable",
                        "temporary": True,
                    }
                    # Known keys keep working meanwhile.
                    async with ws_client(server.ws_url) as other:
                        await other.connect(signed(rotated, "RS256", "new", "gina"))
                    jwks.status = 200
                    jwks.publish(later, "k3")
                    assert (await client.connect(signed(later, "RS256", "k3", "hal")))["client"]


# --- live expiry: nothing is delivered after exp + grace --------------------------------


def exp_of(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def publications(client: WSClient, channel: str) -> list[Any]:
    return [
        m["push"]["pub"]["data"]
        for m in client.unclaimed
        if m.get("push", {}).get("channel") == channel and "pub" in m["push"]
    ]


async def test_nothing_is_delivered_after_the_connection_token_expires(tmp_path: Path) -> None:
    grace = 0.5
    async with running_server(settings_for(tmp_path, token_expiry_grace=grace)) as server:
        async with bystander(server) as good, ws_client(server.ws_url) as late:
            token = server.token("late", ttl=2)  # exp is whole seconds: 1 to 2 s from now
            deadline = exp_of(token) + grace
            result = await late.connect(token)
            assert result["expires"] is True and result["ttl"] <= 2
            await late.subscribe("news")
            # Right before the deadline: delivered.
            await wait_for(lambda: time.time() >= deadline - 0.3)
            await server.tidings.publish("news", {"when": "before"})
            await late.publication("news", {"when": "before"})
            # Right at the deadline, whether or not the expiry timer has run yet.
            await wait_for(lambda: time.time() >= deadline, interval=0.001)
            await server.tidings.publish("news", {"when": "after"})
            await closed_with(late, 3005)
            assert {"when": "after"} not in publications(late, "news")
            await good.publication("news", {"when": "before"})
            await good.publication("news", {"when": "after"})
        assert "late" not in server.tidings.hub.users


async def test_subscription_token_expiry_ends_with_3006_unless_refreshed(tmp_path: Path) -> None:
    grace = 0.5
    channel = "$chat:vip"
    async with running_server(settings_for(tmp_path, token_expiry_grace=grace)) as server:
        async with (
            bystander(server) as good,
            ws_client(server.ws_url) as stale,
            ws_client(server.ws_url) as fresh,
        ):
            sub_token = make_subscription_token(SECRET, "vip", channel, ttl=2)
            deadline = exp_of(sub_token) + grace
            for client in (stale, fresh):
                await client.connect(server.token("vip", ttl=3600))
                reply = await client.ok("subscribe", {"channel": channel, "token": sub_token})
                assert reply["expires"] is True and reply["ttl"] <= 2
            # A token for another user or channel refreshes nothing.
            for wrong in (
                make_subscription_token(SECRET, "mallory", channel, ttl=3600),
                make_subscription_token(SECRET, "vip", "$chat:other", ttl=3600),
            ):
                reply = await fresh.call("sub_refresh", {"channel": channel, "token": wrong})
                assert reply["error"]["code"] == 103
            renewed = await fresh.ok(
                "sub_refresh",
                {"channel": channel, "token": make_subscription_token(SECRET, "vip", channel)},
            )
            assert renewed["expires"] is True and renewed["ttl"] > 3000

            await wait_for(lambda: time.time() >= deadline - 0.3)
            await server.tidings.publish(channel, {"when": "before"})
            for client in (stale, fresh):
                await client.publication(channel, {"when": "before"})
            await wait_for(lambda: time.time() >= deadline, interval=0.001)
            await server.tidings.publish(channel, {"when": "after"})
            # As Centrifugo documents: the connection closes with 3006 and reconnects.
            await closed_with(stale, 3006)
            assert {"when": "after"} not in publications(stale, channel)
            await fresh.publication(channel, {"when": "after"})
            assert fresh.is_open
            await delivered(server, good)


# --- channels: other users' '#' channels, private '$' channels, forged publishers ------


async def test_other_users_channels_are_closed(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as alice:
        await alice.connect(server.token("alice"))
        await alice.subscribe("notifications#alice")
        await alice.subscribe("chat:dm#alice,bob")
        async with ws_client(server.ws_url) as mallory:
            await mallory.connect(server.token("mallory"))
            for channel in ("notifications#alice", "chat:dm#alice,bob", "chat:dm#bob,alice"):
                reply = await mallory.call("subscribe", {"channel": channel})
                assert reply["error"]["code"] == 103, channel
            for method, params in (
                ("publish", {"channel": "chat:dm#alice,bob", "data": {"fake": 1}}),
                ("history", {"channel": "chat:dm#alice,bob", "limit": 10}),
                ("presence", {"channel": "chat:dm#alice,bob"}),
            ):
                assert (await mallory.call(method, params))["error"]["code"] == 103, method
            await server.tidings.send_notification("alice", {"for": "alice"})
            await alice.publication("notifications#alice", {"for": "alice"})
            assert not publications(mallory, "notifications#alice")
            assert not publications(alice, "chat:dm#alice,bob")  # the fake never arrived


async def test_private_channels_need_a_token_for_this_user_and_channel(server: Running) -> None:
    channel = "$chat:vault"
    async with bystander(server), ws_client(server.ws_url) as mallory:
        await mallory.connect(server.token("mallory"))
        for token in (
            None,  # no token
            make_subscription_token(SECRET, "alice", channel),  # alice's, stolen
            make_subscription_token(SECRET, "mallory", "$chat:other"),  # another channel
            make_subscription_token("k" * 40, "mallory", channel),  # not the server's key
            server.token("mallory"),  # a connection token: no channel claim
        ):
            params = {"channel": channel} | ({"token": token} if token else {})
            reply = await mallory.call("subscribe", params)
            assert reply["error"]["code"] == 103, token
        assert channel not in server.tidings.hub.channels
        mine = make_subscription_token(SECRET, "mallory", channel, ttl=-10)
        reply = await mallory.call("subscribe", {"channel": channel, "token": mine})
        assert reply["error"]["code"] == 109  # expired: the SDK fetches a new one


async def test_publisher_identity_is_stamped_by_the_server(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as alice:
        await alice.connect(server.token("alice", info={"name": "Alice"}))
        await alice.subscribe("chat:lobby")
        async with ws_client(server.ws_url) as mallory:
            me = await mallory.connect(server.token("mallory"))
            await mallory.subscribe("chat:lobby")
            alice_id = next(iter(server.tidings.hub.users["alice"])).client_id
            forged = {
                "channel": "chat:lobby",
                "data": {"text": "send me your password"},
                "info": {"user": "alice", "client": alice_id, "conn_info": {"name": "Alice"}},
                "user": "alice",
                "client": alice_id,
            }
            assert await mallory.ok("publish", forged) == {}
            pub = await alice.publication("chat:lobby", {"text": "send me your password"})
            assert pub["info"]["user"] == "mallory"
            assert pub["info"]["client"] == me["client"]
            assert "conn_info" not in pub["info"]


async def test_publishing_where_not_allowed(server: Running) -> None:
    async with bystander(server) as good, ws_client(server.ws_url) as mallory:
        await mallory.connect(server.token("mallory"))
        await mallory.subscribe("news")
        # news takes publications from the server only, even from its subscribers.
        reply = await mallory.call("publish", {"channel": "news", "data": {"fake": True}})
        assert reply["error"]["code"] == 103
        # chat takes them from subscribers only.
        reply = await mallory.call("publish", {"channel": "chat:x", "data": {"fake": True}})
        assert reply["error"]["code"] == 103
        await delivered(server, good)
        assert {"fake": True} not in publications(good, "news")


# --- abuse limits ----------------------------------------------------------------------


async def test_connections_per_user_are_capped(tmp_path: Path) -> None:
    async with running_server(settings_for(tmp_path, max_connections_per_user=2)) as server:
        hub = server.tidings.hub
        async with (
            bystander(server),
            ws_client(server.ws_url) as first,
            ws_client(server.ws_url) as second,
        ):
            await first.connect(server.token("mallory"))
            await second.connect(server.token("mallory"))
            await refused_at_connect(server, server.token("mallory"), 3504)
            assert len(hub.users["mallory"]) == 2
            assert hub.metrics.limits["connections_per_user"] == 1
            # A freed slot can be taken again.
            await first.ws.close()
            await wait_for(lambda: len(hub.users["mallory"]) == 1)
            async with ws_client(server.ws_url) as third:
                assert (await third.connect(server.token("mallory")))["client"]
        assert 'tidings_limit_hits_total{limit="connections_per_user"} 1.0' in await scrape(server)


async def test_command_flood_is_closed_with_3013(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, command_rate=0.1, command_burst=3, command_flood_limit=5)
    async with running_server(settings) as server:
        async with bystander(server), ws_client(server.ws_url) as flood:
            await flood.connect(server.token("mallory"))  # one of the three
            ids = [flood.new_id() for _ in range(6)]
            await flood.send(*({"id": i, "ping": {}} for i in ids))
            replies = [await flood.reply(i) for i in ids]
            assert [r.get("error", {}).get("code") for r in replies] == [None] * 2 + [111] * 4
            # One more refusal in a row and it is closed: 3013, reconnect with backoff.
            await flood.send(*({"id": flood.new_id(), "ping": {}} for _ in range(50)))
            await closed_with(flood, 3013)
        hub = server.tidings.hub
        assert hub.metrics.limits["command_flood"] == 1
        assert hub.metrics.limits["command_rate"] == 5
        text = await scrape(server)
        assert 'tidings_limit_hits_total{limit="command_flood"} 1.0' in text
        assert 'tidings_disconnects_total{code="3013"} 1.0' in text


async def test_subscriptions_are_capped(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, max_channels_per_connection=3)
    async with running_server(settings) as server:
        async with bystander(server), ws_client(server.ws_url) as greedy:
            await greedy.connect(server.token("mallory"))
            for i in range(3):
                await greedy.subscribe(f"chat:{i}")
            for i in range(3, 6):
                reply = await greedy.call("subscribe", {"channel": f"chat:{i}"})
                assert reply["error"] == {"code": 106, "message": "too many channels"}
            assert greedy.is_open
        assert server.tidings.hub.metrics.limits["channels_per_connection"] == 3
        assert 'tidings_limit_hits_total{limit="channels_per_connection"} 3.0' in await scrape(
            server
        )


async def test_deflate_bomb_is_measured_after_inflating(server: Running) -> None:
    async with (
        bystander(server),
        connect(server.ws_url, extensions=[ClientPerMessageDeflateFactory()], max_size=None) as ws,
    ):
        await ws.send(orjson.dumps({"id": 1, "connect": {"token": server.token("m")}}).decode())
        assert "connect" in orjson.loads(await ws.recv())
        # About 4 KiB on the wire, 8 MiB inflated: the limit applies to the latter.
        bomb = '{"id":2,"rpc":{"method":"x","data":"' + "0" * (8 << 20) + '"}}'
        await ws.send(bomb)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1009


# --- API keys ----------------------------------------------------------------------------


async def test_several_api_keys_hashed_and_wrong_ones_refused(tmp_path: Path) -> None:
    keys = ["primary-key-" + secrets.token_hex(8), "second-key-" + secrets.token_hex(8)]
    settings = settings_for(tmp_path, api_key=keys[0], api_keys=[keys[1], "third-key-abc"])
    async with running_server(settings) as server:
        tidings = server.tidings
        # Only digests are kept: no plaintext key in the settings or the hub.
        assert tidings.settings.api_key is None and tidings.settings.api_keys == []
        assert len(tidings.hub.api_keys) == 3
        assert not any(k.encode() in d for k in keys for d in tidings.hub.api_keys._digests)
        async with bystander(server) as good:
            api = f"{server.http_url}/api"
            for n, key in enumerate([*keys, "third-key-abc"]):
                async with AsyncClient(api, key) as cent:
                    await cent.publish(PublishRequest(channel="news", data={"key": n}))
                await good.publication("news", {"key": n})
            for guess in ("", keys[0][:-1], keys[0] + "x", keys[0].upper(), "third-key-ab"):
                async with AsyncClient(api, guess) as cent:
                    with pytest.raises(CentUnauthorizedError):
                        await cent.publish(PublishRequest(channel="news", data={"guess": 1}))
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                body = {"channel": "news", "data": {"raw": 1}}
                missing = await http.post("/api/publish", json=body)
                assert missing.status_code == 401 and missing.json()["error"]["code"] == 101
                ok = await http.post(
                    "/api/publish", json=body, headers={"Authorization": f"apikey {keys[1]}"}
                )
                assert ok.status_code == 200
            await good.publication("news", {"raw": 1})
            assert {"guess": 1} not in publications(good, "news")
        assert tidings.hub.metrics.api_auth_failures == 6
        assert "tidings_api_auth_failures_total 6.0" in await scrape(server)


# --- browser safety ------------------------------------------------------------------------


async def handshake_status(server: Running, origin: str | None) -> int:
    try:
        async with connect(server.ws_url, origin=Origin(origin) if origin else None):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


async def test_cross_site_websocket_hijacking_is_refused(tmp_path: Path) -> None:
    async with running_server(settings_for(tmp_path)) as server, bystander(server):
        own = f"{server.host}:{server.port}"
        assert await handshake_status(server, f"http://{own}") == 101
        # Same host over https (TLS ended by a proxy in front): still the same site.
        assert await handshake_status(server, f"https://{own}") == 101
        for origin in (
            f"http://{own}.evil.com",  # suffix trick on the same-origin check
            f"http://{own}@evil.com",  # userinfo trick
            f"http://evil.com/{own}",
            f"ws://{own}",  # not a web origin
            "null",  # sandboxed iframes, file:// pages
        ):
            assert await handshake_status(server, origin) == 403, origin
    allow = ["https://app.example.com"]
    async with running_server(settings_for(tmp_path, allowed_origins=allow)) as server:
        async with bystander(server):
            assert await handshake_status(server, "https://app.example.com") == 101
            for origin in (
                "https://app.example.com/",
                "https://APP.example.com",
                "https://app.example.com.evil.com",
                "http://app.example.com",
                f"http://{server.host}:{server.port}",  # same origin no longer suffices
            ):
                assert await handshake_status(server, origin) == 403, origin


async def test_cors_for_the_http_api(tmp_path: Path) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    }
    async with running_server(settings_for(tmp_path)) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            response = await http.options(
                "/api/publish", headers={"Origin": "https://app.example.com", **preflight}
            )
            assert "access-control-allow-origin" not in response.headers
    settings = settings_for(tmp_path, cors_origins=["https://app.example.com"])
    async with running_server(settings) as server, bystander(server) as good:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            response = await http.options(
                "/api/publish", headers={"Origin": "https://app.example.com", **preflight}
            )
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "https://app.example.com"
            assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
            assert "access-control-allow-credentials" not in response.headers
            evil = await http.options(
                "/api/publish", headers={"Origin": "https://evil.example.com", **preflight}
            )
            assert evil.status_code == 400
            assert "access-control-allow-origin" not in evil.headers
            # A simple request from another origin: the browser gets no permission to read.
            response = await http.post(
                "/api/publish",
                json={"channel": "news", "data": {"cors": 1}},
                headers={"Origin": "https://evil.example.com", "X-API-Key": "nope"},
            )
            assert response.status_code == 401
            assert "access-control-allow-origin" not in response.headers
        assert {"cors": 1} not in publications(good, "news")


async def test_tokens_in_the_url_are_ignored(server: Running) -> None:
    token = server.token("alice")
    async with bystander(server):
        for query in (f"?token={token}", f"?format=json&token={token}", f"?jwt={token}"):
            async with ws_client(server.ws_url + query) as client:
                await client.send({"id": 1, "connect": {}})
                await closed_with(client, 3500)
                assert client.disconnect_push() == {"code": 3500, "reason": "token required"}
    assert "alice" not in server.tidings.hub.users


# The test's own clients log what they send at debug level: not the server's logs.
CLIENT_LOGGERS = ("websockets.client", "httpx", "httpcore")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(CLIENT_LOGGERS):
            return
        self.lines.append(f"{self.format(record)} {record.args!r}")


@contextmanager
def captured_logs() -> Iterator[Capture]:
    """Capture every record of Tidings, uvicorn (access log included) and the libraries."""
    capture = Capture()
    names = ["", "tidings", "uvicorn", "uvicorn.error", "uvicorn.access"]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)


async def test_no_token_or_key_in_the_logs(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, log_level="debug", token_expiry_grace=0.2)
    async with running_server(settings) as server:
        with captured_logs() as logs:
            good = server.token("alice")
            refreshed = server.token("alice", ttl=7200)
            sub = make_subscription_token(SECRET, "alice", "$chat:x")
            wrong_key = "wrong-api-key-" + secrets.token_hex(8)
            bad = [
                make_connection_token("k" * 40, "mallory"),
                forge({"alg": "none"}, claims(), None),
                server.token("mallory", ttl=-30),
                "not-a-jwt-" + secrets.token_hex(16),
            ]
            async with ws_client(server.ws_url) as alice:
                await alice.connect(good)
                await alice.ok("refresh", {"token": refreshed})
                await alice.ok("subscribe", {"channel": "$chat:x", "token": sub})
                bad_sub = make_subscription_token("k" * 40, "alice", "$chat:y")
                bad.append(bad_sub)
                await alice.call("subscribe", {"channel": "$chat:y", "token": bad_sub})
            for token in bad[:4]:
                async with ws_client(server.ws_url) as mallory:
                    await mallory.send({"id": 1, "connect": {"token": token}})
                    await mallory.recv()
            # Other clients may send a token in a header: it is not logged either.
            header_token = server.token("bob")
            async with connect(
                server.ws_url,
                additional_headers={
                    "Authorization": f"Bearer {header_token}",
                    "Cookie": f"session={header_token}",
                },
            ) as ws:
                await ws.send(orjson.dumps({"id": 1, "connect": {"token": header_token}}).decode())
                assert "connect" in orjson.loads(await ws.recv())
            # Other WebSocket paths go through uvicorn's implementation, whose
            # debug log prints handshake headers: they must come out redacted.
            async with connect(
                f"ws://{server.host}:{server.port}/ws",
                additional_headers={"Authorization": f"Bearer {header_token}"},
            ) as echo:
                await echo.send(header_token)
                assert await echo.recv() == header_token
            bad.append(header_token)
            async with ws_client(server.ws_url) as short:
                expiring = server.token("short", ttl=1)
                bad.append(expiring)
                await short.connect(expiring)
                assert await short.closed(timeout=5) == 3005
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                for key in (wrong_key, "test-api-key"):
                    await http.post(
                        "/api/publish",
                        json={"channel": "news", "data": 1},
                        headers={"X-API-Key": key},
                    )
            assert await handshake_status(server, "https://evil.example.com") == 403
            await wait_for(lambda: any("uvicorn.access" in line for line in logs.lines))
        text = "\n".join(logs.lines)
        # The capture saw the server at work: its own lines, the access log, the handshakes.
        assert "tidings.transport" in text and "/api/publish" in text
        assert "< authorization: [redacted]" in text.lower()
        for token in [good, refreshed, sub, *bad]:
            signature = token.rsplit(".", 1)[-1]
            assert token not in text
            assert len(signature) < 16 or signature not in text
        for key in (wrong_key, "test-api-key"):
            assert key not in text
