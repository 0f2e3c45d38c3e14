"""Settings: every knob of a Tidings node in one typed object.

Values come, in order of precedence, from keyword arguments, ``TIDINGS_*``
environment variables, an optional TOML config file, and the defaults below.
``tidings serve`` only fills this object in; so does a test or an app that
mounts Tidings.
"""

from __future__ import annotations

import logging
import os
import secrets
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

log = logging.getLogger("tidings.config")


class NamespaceOptions(BaseModel):
    """What channels of one namespace (``ns:name``) do and who may do what in them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    presence: bool = Field(False, description="Track who is subscribed.")
    join_leave: bool = Field(False, description="Publish join and leave events.")
    force_push_join_leave: bool = Field(
        False, description="Push join/leave to every subscriber, not only to those who ask."
    )
    history_size: int = Field(0, ge=0, description="Publications kept per channel (0: none).")
    history_ttl: float = Field(0, ge=0, description="Seconds a publication stays in history.")
    force_recovery: bool = Field(
        False, description="Make every subscription recoverable, whatever the client asks."
    )
    force_positioning: bool = Field(False, description="Track stream positions for every client.")
    allow_subscribe_for_client: bool = Field(True, description="Authenticated users may subscribe.")
    allow_subscribe_for_anonymous: bool = Field(False, description="Anonymous users may subscribe.")
    allow_publish_for_subscriber: bool = Field(False, description="Subscribers may publish.")
    allow_publish_for_client: bool = Field(False, description="Any authenticated user may publish.")
    allow_presence_for_subscriber: bool = Field(False, description="Subscribers may read presence.")
    allow_presence_for_client: bool = Field(False, description="Any user may read presence.")
    allow_history_for_subscriber: bool = Field(False, description="Subscribers may read history.")
    allow_history_for_client: bool = Field(False, description="Any user may read history.")
    allow_user_limited_channels: bool = Field(
        True, description="Honour the '#' user boundary (notifications#alice)."
    )

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


# Channels with no namespace: history and recovery, publishing only from the server.
DEFAULT_NAMESPACE = NamespaceOptions(history_size=100, history_ttl=600, force_recovery=True)

DEFAULT_NAMESPACES: dict[str, NamespaceOptions] = {
    "chat": NamespaceOptions(
        presence=True,
        join_leave=True,
        force_push_join_leave=True,
        history_size=100,
        history_ttl=600,
        force_recovery=True,
        allow_publish_for_subscriber=True,
        allow_presence_for_subscriber=True,
        allow_history_for_subscriber=True,
    ),
    # Chat rooms: room:<id>, where only the room's members (in the database) get in.
    "room": NamespaceOptions(
        presence=True,
        join_leave=True,
        force_push_join_leave=True,
        history_size=100,
        history_ttl=600,
        force_recovery=True,
        allow_publish_for_subscriber=True,
        allow_presence_for_subscriber=True,
        allow_history_for_subscriber=True,
        allow_user_limited_channels=False,
    ),
}

# The namespace whose channels are chat rooms with members (see tidings.store).
ROOM_NAMESPACE = "room"

# Where Settings.with_generated_keys keeps generated keys, inside the data dir.
KEY_FILES = {"secret": "secret", "api_key": "api_key"}

_config_file: ContextVar[Path | None] = ContextVar("tidings_config_file", default=None)


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by ``Settings.load(config_file=...)``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get()
        if path is None:
            return {}
        with path.open("rb") as f:
            return tomllib.load(f)


class Settings(BaseSettings):
    """All settings of a Tidings node. Env vars are ``TIDINGS_`` + the upper-cased name."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", extra="forbid", frozen=True)

    # --- keys (generated into the data dir when unset) ---
    secret: str | None = Field(None, description="HMAC key for connection and subscription JWTs.")
    api_key: str | None = Field(None, description="Key for the server API (X-API-Key header).")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More server API keys, comma-separated; each works as api_key does.",
    )

    # --- storage and engines ---
    data_dir: Path = Field(
        Path("./tidings-data"), description="Generated keys and SQLite live here."
    )
    broker_url: str = Field(
        "memory://", description="memory:// (one node) or redis://host:port/db."
    )
    database_url: str | None = Field(None, description="Default: SQLite in the data dir.")
    database_auto_migrate: bool | None = Field(
        None,
        description="Migrate the database at startup (default: only the embedded SQLite; "
        "run `tidings db upgrade` for a shared PostgreSQL).",
    )

    # --- accounts: /token, /register, /logout ---
    access_token_ttl: float = Field(
        900.0, gt=0, description="Seconds an access (connection) token from /token is valid."
    )
    refresh_token_ttl: float = Field(
        30 * 86400.0, gt=0, description="Seconds a refresh token from /token is valid."
    )
    allow_registration: bool = Field(False, description="Enable self-registration (/register).")
    login_attempts_per_user: int = Field(
        10, gt=0, description="Login attempts per user name per login_window before 429."
    )
    login_attempts_per_address: int = Field(
        30, gt=0, description="Login attempts per client address per login_window before 429."
    )
    login_window: float = Field(
        60.0, gt=0, description="Seconds over which the login attempt allowance refills."
    )

    # --- who may connect ---
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Exact browser origins allowed; empty means same-origin only.",
    )
    allow_anonymous: bool = Field(False, description="Accept connections without a token.")
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["HS256"], description="Accepted JWT algorithms (pinned)."
    )
    jwt_rsa_public_key: str | None = Field(
        None, description="RSA public key for RS*/PS* tokens: PEM text or a PEM file's path."
    )
    jwt_ec_public_key: str | None = Field(
        None, description="ECDSA public key for ES* tokens: PEM text or a PEM file's path."
    )
    jwt_jwks_url: str | None = Field(
        None, description="JWKS URL for RS*/PS*/ES* tokens with a kid (https unless loopback)."
    )
    jwt_jwks_cache_ttl: float = Field(
        300.0, gt=0, description="Seconds JWKS keys are used before the set is fetched again."
    )
    jwt_jwks_refresh_interval: float = Field(
        10.0, ge=0, description="Least seconds between JWKS fetches (an unknown kid asks for one)."
    )
    jwt_audience: str | None = Field(None, description="Required aud claim (unset: not checked).")
    jwt_issuer: str | None = Field(None, description="Required iss claim (unset: not checked).")
    jwt_require_exp: bool = Field(
        False, description="Refuse tokens without exp (Centrifugo accepts them; off by default)."
    )
    jwt_leeway: float = Field(
        0.0, ge=0, description="Seconds of clock skew allowed when checking exp, nbf and iat."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the HTTP API from browsers (CORS); empty: no CORS.",
    )

    # --- channels ---
    namespaces: dict[str, NamespaceOptions] = Field(
        default_factory=dict,
        description="Namespace options by name, merged over the built-in ones (chat).",
    )
    default_namespace: NamespaceOptions = Field(
        DEFAULT_NAMESPACE, description="Options of channels without a namespace."
    )

    # --- limits ---
    max_message_size: int = Field(65536, gt=0, description="Largest incoming message, in bytes.")
    max_channels_per_connection: int = Field(128, gt=0, description="Subscriptions per connection.")
    max_connections_per_user: int = Field(
        100, ge=0, description="Connections per user on one node before 3504 (0: no cap)."
    )
    max_channel_length: int = Field(255, gt=0, description="Longest channel name, in bytes.")
    command_rate: float = Field(100.0, gt=0, description="Sustained commands per second.")
    command_burst: int = Field(200, gt=0, description="Commands allowed in a burst.")
    command_flood_limit: int = Field(
        100, ge=0, description="Commands refused (111) in a row before 3013 (0: never close)."
    )
    auth_timeout: float = Field(10.0, gt=0, description="Seconds to send connect before 3502.")
    ping_interval: float = Field(25.0, gt=0, description="Seconds between server pings.")
    pong_timeout: float = Field(8.0, gt=0, description="Seconds to answer a ping before 3012.")
    token_expiry_grace: float = Field(
        25.0, ge=0, description="Seconds after token expiry to refresh before 3005."
    )
    write_queue_max_bytes: int = Field(
        1 << 20, gt=0, description="Outgoing bytes queued per connection before 3008 (slow)."
    )
    write_delay: float = Field(
        0.0,
        ge=0,
        description="Milliseconds to hold outgoing frames for bigger batches (0: never wait).",
    )
    websocket_direct: bool = Field(
        True,
        description="Serve /connection/websocket without ASGI under tidings serve (leaner).",
    )
    websocket_max_fragments: int = Field(
        128, gt=0, description="Frames one incoming message may be split into before 1009."
    )
    max_request_head_size: int = Field(
        16384, gt=0, description="Bytes of an HTTP request's line and headers before 431."
    )
    max_request_headers: int = Field(
        100, gt=0, description="Header lines in an HTTP request before 431."
    )
    request_head_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request's headers."
    )
    websocket_compression: bool = Field(
        True, description="Offer permessage-deflate (each publication compressed once)."
    )
    compression_min_size: int = Field(
        512, ge=0, description="Messages smaller than this many bytes go uncompressed."
    )
    shutdown_timeout: float = Field(10.0, gt=0, description="Seconds to drain on SIGTERM.")

    # --- the web app ---
    web_app: bool = Field(
        True, description="Serve the chat app at / and the operator page at /admin (serve)."
    )

    # --- identity and logs ---
    node_name: str = Field("", description="Name of this node in info and logs.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level shown."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text for people, json for log pipelines (one object per line)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("allowed_origins", "jwt_algorithms", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _pinnable(cls, value: list[str]) -> list[str]:
        from .auth.tokens import SUPPORTED_ALGORITHMS  # here: auth imports config

        unknown = [alg for alg in value if alg not in SUPPORTED_ALGORITHMS]
        if unknown or not value:
            raise ValueError(f"accepted: {', '.join(SUPPORTED_ALGORITHMS)}; got {value}")
        return value

    @field_validator("jwt_jwks_url")
    @classmethod
    def _safe_jwks_url(cls, value: str | None) -> str | None:
        from .auth.jwks import check_jwks_url

        return None if not value else check_jwks_url(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build settings from overrides, the environment and an optional TOML file."""
        token = _config_file.set(config_file)
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)

    # --- derived values ---

    def namespace(self, name: str) -> NamespaceOptions | None:
        """Options of a namespace, or None when it is not configured."""
        if name == "":
            return self.default_namespace
        if name in self.namespaces:
            return self.namespaces[name]
        return DEFAULT_NAMESPACES.get(name)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'tidings.db'}"

    def with_generated_keys(self) -> Settings:
        """Fill in a missing secret and API key from the data dir, generating them once.

        The generated values are kept in files readable only by their owner, so
        every restart (and `tidings publish`) finds the same ones.
        """
        updates: dict[str, str] = {}
        for field, filename in KEY_FILES.items():
            if getattr(self, field) or (field == "api_key" and self.api_keys):
                continue
            path = self.data_dir / filename
            if path.exists():
                updates[field] = path.read_text().strip()
                continue
            self.data_dir.mkdir(parents=True, exist_ok=True)
            value = secrets.token_urlsafe(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value + "\n")
            env = f"TIDINGS_{field.upper()}"
            log.warning("%s was not set: generated one and stored it in %s", env, path)
            updates[field] = value
        return self.model_copy(update=updates) if updates else self
