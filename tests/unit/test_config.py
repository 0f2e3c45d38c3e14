"""Settings: environment, config file, precedence and generated keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from tidings import NamespaceOptions, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TIDINGS_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_ones() -> None:
    settings = Settings.load()
    assert settings.broker_url == "memory://"
    assert settings.data_dir == Path("./tidings-data")
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.max_message_size == 65536
    assert settings.max_channels_per_connection == 128
    chat = settings.namespace("chat")
    assert chat is not None and chat.allow_publish_for_subscriber and chat.presence
    assert chat.history_size == 100 and chat.history_ttl == 600
    top = settings.namespace("")
    assert top is not None and top.force_recovery and not top.allow_publish_for_subscriber
    assert settings.namespace("nope") is None


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_ALLOWED_ORIGINS", "https://a.example, http://localhost:8000")
    monkeypatch.setenv("TIDINGS_NAMESPACES", '{"news": {"history_size": 5, "history_ttl": 60}}')
    monkeypatch.setenv("TIDINGS_MAX_MESSAGE_SIZE", "1024")
    settings = Settings.load()
    assert settings.allowed_origins == ["https://a.example", "http://localhost:8000"]
    news = settings.namespace("news")
    assert news == NamespaceOptions(history_size=5, history_ttl=60)
    assert settings.namespace("chat") is not None  # built-in namespaces stay
    assert settings.max_message_size == 1024


def test_config_file_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(
        'broker_url = "memory://file"\n'
        "max_channels_per_connection = 7\n"
        "[namespaces.rooms]\n"
        "presence = true\n"
        "allow_publish_for_subscriber = true\n"
    )
    monkeypatch.setenv("TIDINGS_MAX_CHANNELS_PER_CONNECTION", "9")
    settings = Settings.load(config_file=config, node_name="from-kwargs")
    assert settings.broker_url == "memory://file"  # from the file
    assert settings.max_channels_per_connection == 9  # the environment beats the file
    assert settings.node_name == "from-kwargs"  # arguments beat both
    rooms = settings.namespace("rooms")
    assert rooms is not None and rooms.presence and rooms.allow_publish_for_subscriber


def test_unknown_settings_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("max_mesage_size = 10\n")  # a typo must not pass silently
    with pytest.raises(ValidationError):
        Settings.load(config_file=config)
    with pytest.raises(ValidationError):
        Settings.load(namespaces={"x": {"presense": True}})


def test_generated_keys_are_private_and_stable(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data")
    first = settings.with_generated_keys()
    assert first.secret and first.api_key and first.secret != first.api_key
    for name in ("secret", "api_key"):
        mode = stat.S_IMODE((tmp_path / "data" / name).stat().st_mode)
        assert mode == 0o600
    again = Settings.load(data_dir=tmp_path / "data").with_generated_keys()
    assert (again.secret, again.api_key) == (first.secret, first.api_key)
    given = Settings.load(data_dir=tmp_path / "data", secret="mine").with_generated_keys()
    assert given.secret == "mine"
