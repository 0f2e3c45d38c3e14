"""Token verification, JWKS parsing and caching, and API key hashing: plain values, no server.

Each attack on a token has an integration twin in tests/integration/test_security.py
that tries it against a running server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tidings import Settings
from tidings.auth import jwks as jwks_module
from tidings.auth.jwks import MAX_KEYS, JWKSCache, JWKSKey, KeysUnavailable, parse_keys
from tidings.auth.tokens import (
    ApiKeyring,
    InvalidToken,
    TokenExpired,
    TokenVerifier,
    load_public_key,
    make_connection_token,
    make_subscription_token,
)

SECRET = "unit-secret-0123456789abcdef0123456789abcdef"


# --- keys and hand-made tokens ------------------------------------------------


def _pem(key: Any) -> str:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT built by hand, as an attacker would: PyJWT refuses to make these."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(user: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user, "iat": now, "exp": now + 600, **extra}


def hs_verifier(**kwargs: Any) -> TokenVerifier:
    return TokenVerifier(SECRET, ["HS256"], **kwargs)


def assert_invalid(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_connection(token)
    # The reason never repeats the token (or its signature) back.
    signature = token.rsplit(".", 1)[-1]
    for part in (token, signature):
        assert len(part) < 8 or part not in str(caught.value)


# --- the happy path -----------------------------------------------------------


def test_hs256_token_gives_its_claims() -> None:
    token = make_connection_token(SECRET, "alice", info={"n": 1}, channels=["news"])
    got = hs_verifier().verify_connection(token)
    assert got.user == "alice" and got.channels == ("news",) and got.info == b'{"n":1}'
    assert got.expires_at is not None and got.expires_at > time.time()
    sub = hs_verifier().verify_subscription(make_subscription_token(SECRET, "alice", "$x"))
    assert (sub.user, sub.channel) == ("alice", "$x")


def test_rs256_and_es256_with_static_keys(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = TokenVerifier(
        SECRET,
        ["HS256", "RS256", "ES256"],
        rsa_public_key=_pem(rsa_key),
        ec_public_key=_pem(ec_key),
    )
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256")):
        token = jwt.encode(claims("bob"), key, algorithm=alg)
        assert verifier.verify_connection(token).user == "bob"
    assert verifier.verify_connection(make_connection_token(SECRET, "carol")).user == "carol"


# --- what must be refused --------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(alg: str) -> None:
    assert_invalid(hs_verifier(), forge({"alg": alg, "typ": "JWT"}, claims(), None))


@pytest.mark.parametrize("algorithms", [["none"], ["HS256", "none"], ["HS1"], []])
def test_alg_none_and_unknown_algorithms_cannot_be_pinned(algorithms: list[str]) -> None:
    with pytest.raises(ValueError):
        TokenVerifier(SECRET, algorithms)


def test_a_pinned_algorithm_needs_its_key() -> None:
    with pytest.raises(ValueError, match="RS256"):
        TokenVerifier(SECRET, ["RS256"])
    with pytest.raises(ValueError, match="HS256"):
        TokenVerifier(None, ["HS256"])


@pytest.mark.parametrize("pinned", [["RS256"], ["HS256", "RS256"]])
def test_hs_rs_confusion_is_refused(rsa_key: rsa.RSAPrivateKey, pinned: list[str]) -> None:
    pem = _pem(rsa_key)
    verifier = TokenVerifier(SECRET, pinned, rsa_public_key=pem)
    # The attacker knows the public key and uses it as the HMAC secret.
    for secret in (pem, pem.strip(), pem.replace("\n", "\r\n")):
        assert_invalid(verifier, forge({"alg": "HS256", "typ": "JWT"}, claims(), secret.encode()))
    assert verifier.verify_connection(jwt.encode(claims(), rsa_key, algorithm="RS256")).user


def test_a_token_algorithm_outside_the_pinned_ones_is_refused(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    verifier = TokenVerifier(SECRET, ["HS256"], rsa_public_key=_pem(rsa_key))
    assert_invalid(verifier, jwt.encode(claims(), rsa_key, algorithm="RS256"))
    assert_invalid(verifier, jwt.encode(claims(), SECRET * 2, algorithm="HS512"))


def test_bad_signature_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    token = make_connection_token(SECRET, "alice")
    head, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    assert_invalid(hs_verifier(), f"{head}.{payload}.{flipped}")
    # A payload swapped under a valid signature.
    other = b64url(json.dumps(claims("mallory")).encode())
    assert_invalid(hs_verifier(), f"{head}.{other}.{signature}")
    assert_invalid(hs_verifier(), make_connection_token("x" * 40, "alice"))
    # RS256 signed by another key pair.
    verifier = TokenVerifier(SECRET, ["RS256"], rsa_public_key=_pem(rsa_key))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_invalid(verifier, jwt.encode(claims(), stranger, algorithm="RS256"))


def test_audience_when_configured() -> None:
    verifier = hs_verifier(audience="tidings")
    assert verifier.verify_connection(jwt.encode(claims(aud="tidings"), SECRET)).user
    assert verifier.verify_connection(jwt.encode(claims(aud=["x", "tidings"]), SECRET)).user
    assert_invalid(verifier, jwt.encode(claims(aud="another-app"), SECRET))
    assert_invalid(verifier, jwt.encode(claims(), SECRET))  # missing
    # Not configured: aud is not looked at (as Centrifugo does).
    assert hs_verifier().verify_connection(jwt.encode(claims(aud="anything"), SECRET)).user


def test_issuer_when_configured() -> None:
    verifier = hs_verifier(issuer="https://id.example.com")
    assert verifier.verify_connection(jwt.encode(claims(iss="https://id.example.com"), SECRET))
    assert_invalid(verifier, jwt.encode(claims(iss="https://evil.example.com"), SECRET))
    assert_invalid(verifier, jwt.encode(claims(), SECRET))


def test_not_before_in_the_future_is_refused() -> None:
    now = int(time.time())
    assert_invalid(hs_verifier(), jwt.encode(claims(nbf=now + 60), SECRET))
    # Within the configured clock skew it passes.
    assert hs_verifier(leeway=120).verify_connection(jwt.encode(claims(nbf=now + 60), SECRET))
    assert_invalid(hs_verifier(), jwt.encode(claims(iat=now + 60), SECRET))


def test_missing_exp_when_required() -> None:
    no_exp = {"sub": "alice", "iat": int(time.time())}
    assert hs_verifier().verify_connection(jwt.encode(no_exp, SECRET)).expires_at is None
    assert_invalid(hs_verifier(require_exp=True), jwt.encode(no_exp, SECRET))
    assert hs_verifier(require_exp=True).verify_connection(jwt.encode(claims(), SECRET))
    with pytest.raises(InvalidToken):
        hs_verifier(require_exp=True).verify_subscription(
            jwt.encode({"sub": "alice", "channel": "$x"}, SECRET)
        )


def test_expired_is_its_own_error() -> None:
    with pytest.raises(TokenExpired):
        hs_verifier().verify_connection(make_connection_token(SECRET, "alice", ttl=-5))


@pytest.mark.parametrize(
    "token",
    ["", "not.a.jwt", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.x", "é.é.é"],
)
def test_garbage_is_invalid(token: str) -> None:
    assert_invalid(hs_verifier(), token)


def test_claim_types() -> None:
    assert_invalid(hs_verifier(), jwt.encode(claims(sub=5), SECRET))
    assert_invalid(hs_verifier(), jwt.encode(claims(channels="news"), SECRET))
    with pytest.raises(InvalidToken):
        hs_verifier().verify_subscription(jwt.encode(claims(), SECRET))  # no channel
    assert_invalid(hs_verifier(), forge({"alg": "HS256", "kid": 7}, claims(), SECRET.encode()))


# --- keys from settings -------------------------------------------------------


def test_public_key_inline_escaped_file_or_certificate(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = _pem(rsa_key)
    path = tmp_path / "key.pem"
    path.write_text(pem)
    numbers = rsa_key.public_key().public_numbers()
    for value in (pem, pem.replace("\n", "\\n"), str(path)):
        key = load_public_key(value)
        assert isinstance(key, rsa.RSAPublicKey) and key.public_numbers() == numbers
    with pytest.raises(ValueError):
        load_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_key_of_the_wrong_type_is_refused(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(ValueError, match="RSA"):
        TokenVerifier(SECRET, ["RS256"], rsa_public_key=_pem(ec_key))
    with pytest.raises(ValueError, match="ECDSA"):
        TokenVerifier(SECRET, ["ES256"], ec_public_key=_pem(rsa_key))


def test_from_settings(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    settings = Settings.load(
        secret=SECRET,
        data_dir=tmp_path,
        jwt_algorithms="ES256",
        jwt_ec_public_key=_pem(ec_key),
        jwt_audience="tidings",
        jwt_issuer="me",
        jwt_require_exp=True,
    )
    verifier = TokenVerifier.from_settings(settings)
    assert verifier.algorithms == ["ES256"] and verifier.jwks is None
    good = jwt.encode(claims(aud="tidings", iss="me"), ec_key, algorithm="ES256")
    assert verifier.verify_connection(good).user == "alice"
    assert_invalid(verifier, make_connection_token(SECRET, "alice"))  # HS256 is not pinned
    with pytest.raises(ValueError, match="https"):
        TokenVerifier.from_settings(
            settings.model_copy(update={"jwt_jwks_url": "http://idp.example.com/jwks"})
        )


# --- JWKS -------------------------------------------------------------------------


def jwk_of(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else None
    if algorithm is None:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    else:
        data = json.loads(algorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, **extra}


def test_parse_keys_takes_only_public_signature_keys(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key))
    keys = parse_keys(
        [
            jwk_of(rsa_key, "r1", alg="RS256"),
            jwk_of(ec_key, "e1"),
            {"kty": "oct", "kid": "h1", "k": b64url(b"secret")},  # never from a JWKS
            {**private, "kid": "p1"},  # a private key published by mistake
            jwk_of(rsa_key, "enc", use="enc"),
            {k: v for k, v in jwk_of(rsa_key, "x").items() if k != "kid"},  # no kid
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            "junk",
            jwk_of(ec_key, "r1"),  # duplicate kid: the first stays
        ]
    )
    assert sorted(keys) == ["e1", "r1"]
    assert keys["r1"].family == "rsa" and keys["r1"].algorithm == "RS256"
    assert keys["e1"].family == "ec" and keys["e1"].algorithm is None
    many = parse_keys([jwk_of(ec_key, f"k{i}") for i in range(MAX_KEYS + 10)])
    assert len(many) == MAX_KEYS


class FakeJWKS(JWKSCache):
    """A cache whose fetch returns what the test says, on a clock the test moves."""

    def __init__(self, **kwargs: Any) -> None:
        self.now = 1000.0
        super().__init__("https://idp.example.com/jwks", clock=lambda: self.now, **kwargs)
        self.served: dict[str, JWKSKey] = {}
        self.fail = False

    async def _fetch(self) -> dict[str, JWKSKey]:
        await asyncio.sleep(0)
        if self.fail:
            raise ValueError("HTTP 503")
        return dict(self.served)


async def test_jwks_cache_fetches_on_unknown_kid_within_bounds(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    cache = FakeJWKS(ttl=300, min_interval=10)
    verifier = TokenVerifier(SECRET, ["RS256"], jwks=cache)
    key = JWKSKey(rsa_key.public_key(), "rsa", None)
    cache.served = {"k1": key}

    def token(kid: str) -> str:
        return jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": kid})

    assert (await verifier.averify_connection(token("k1"))).user == "alice"
    assert cache.fetches == 1
    # Made-up kids inside the interval: no fetch, refused.
    for i in range(50):
        with pytest.raises(InvalidToken):
            await verifier.averify_connection(token(f"forged-{i}"))
    assert cache.fetches == 1
    # Concurrent unknown kids after the interval: one fetch between them.
    cache.now += 11
    cache.served["k2"] = key
    results = await asyncio.gather(
        *(verifier.averify_connection(token("k2")) for _ in range(20)), return_exceptions=True
    )
    assert all(not isinstance(r, BaseException) for r in results)
    assert cache.fetches == 2
    # Known keys are served from the cache until the ttl runs out.
    await verifier.averify_connection(token("k1"))
    assert cache.fetches == 2
    cache.now += 301
    await verifier.averify_connection(token("k1"))
    assert cache.fetches == 3


async def test_jwks_outage_keeps_known_keys_and_is_temporary_for_others(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    cache = FakeJWKS(ttl=300, min_interval=10)
    verifier = TokenVerifier(SECRET, ["RS256"], jwks=cache)
    cache.served = {"k1": JWKSKey(rsa_key.public_key(), "rsa", None)}
    k1 = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    k9 = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k9"})
    await verifier.averify_connection(k1)
    cache.fail = True
    cache.now += 400  # stale: a fetch is due, and fails
    assert (await verifier.averify_connection(k1)).user == "alice"
    with pytest.raises(KeysUnavailable):
        await verifier.averify_connection(k9)  # still cooling down after a failure
    cache.now += 11
    with pytest.raises(KeysUnavailable):
        await verifier.averify_connection(k9)


async def test_jwks_key_must_fit_the_token_algorithm(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    cache = FakeJWKS()
    verifier = TokenVerifier(SECRET, ["HS256", "RS256", "RS512", "ES256"], jwks=cache)
    cache.served = {
        "rsa": JWKSKey(rsa_key.public_key(), "rsa", "RS512"),
        "ec": JWKSKey(ec_key.public_key(), "ec", None),
    }
    good = jwt.encode(claims(), rsa_key, algorithm="RS512", headers={"kid": "rsa"})
    assert (await verifier.averify_connection(good)).user == "alice"
    declared_other = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa"})
    with pytest.raises(InvalidToken):
        await verifier.averify_connection(declared_other)
    wrong_family = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa"})
    with pytest.raises(InvalidToken):
        await verifier.averify_connection(wrong_family)
    # An HS256 token naming a JWKS key is checked with the HMAC secret, never that key.
    pem = _pem(rsa_key).encode()
    confused = forge({"alg": "HS256", "kid": "rsa"}, claims(), pem)
    with pytest.raises(InvalidToken):
        await verifier.averify_connection(confused)
    no_kid = jwt.encode(claims(), ec_key, algorithm="ES256")
    with pytest.raises(InvalidToken):
        await verifier.averify_connection(no_kid)


def test_jwks_url_must_be_https_off_loopback() -> None:
    for url in ("https://idp.example.com/jwks", "http://127.0.0.1:9/jwks", "http://[::1]/j"):
        assert JWKSCache(url).url == url
    for url in ("http://idp.example.com/jwks", "ftp://127.0.0.1/jwks", "file:///etc/jwks"):
        with pytest.raises(ValueError):
            JWKSCache(url)
    assert jwks_module.check_jwks_url("http://localhost:8080/jwks")


# --- API keys -------------------------------------------------------------------


def test_api_keyring_matches_every_key_and_nothing_else() -> None:
    ring = ApiKeyring(["first-key", None, "", "second-key", "first-key"])
    assert len(ring) == 2
    assert ring.matches("first-key") and ring.matches("second-key")
    for wrong in (None, "", "first-ke", "first-key ", "FIRST-KEY", "second-key\x00"):
        assert not ring.matches(wrong)
    assert not ApiKeyring([]).matches("anything")


def test_api_keyring_holds_digests_only_and_compares_with_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ring = ApiKeyring(["k1-plaintext", "k2-plaintext", "k3-plaintext"])
    held = ring._digests
    assert all(isinstance(d, bytes) and len(d) == 32 for d in held)
    assert not any(b"plaintext" in d for d in held)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert ring.matches("k1-plaintext")  # the first key: no early exit
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)


def test_settings_with_several_api_keys(tmp_path: Path) -> None:
    settings = Settings.load(secret=SECRET, data_dir=tmp_path, api_keys="one-key, two-key")
    assert settings.api_keys == ["one-key", "two-key"]
    # With api_keys given, no api_key is generated into the data dir.
    filled = settings.with_generated_keys()
    assert filled.api_key is None and not (tmp_path / "api_key").exists()
    ring = ApiKeyring.from_settings(filled)
    assert ring.matches("one-key") and ring.matches("two-key") and len(ring) == 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"jwt_algorithms": "none"},
        {"jwt_algorithms": "HS256,none"},
        {"jwt_algorithms": ""},
        {"jwt_jwks_url": "http://idp.example.com/jwks"},
    ],
)
def test_settings_refuse_none_and_a_plain_http_jwks(
    tmp_path: Path, overrides: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        Settings.load(secret=SECRET, data_dir=tmp_path, **overrides)
