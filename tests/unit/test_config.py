"""Settings: file, environment overrides, defaults and errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openfeeder.cli import main
from openfeeder.config import Settings, load_settings
from openfeeder.errors import ConfigError


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.brokers.grid_ops.port == 1883
    assert settings.storage.backend == "sqlite"


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "of.toml"
    path.write_text(
        '[brokers.grid_ops]\nurl = "mqtts://ops.example:8883"\n'
        '[brokers.monitoring]\nurl = "mqtt://mon.example"\nkeepalive_s = 60\n'
        '[storage]\nurl = "postgresql://of@db:5432/of"\n'
    )
    settings = load_settings(
        path,
        environ={"OPENFEEDER_BROKERS__MONITORING__KEEPALIVE_S": "90", "OTHER": "x"},
    )
    ops, mon = settings.brokers.grid_ops, settings.brokers.monitoring
    assert (ops.host, ops.port, ops.tls) == ("ops.example", 8883, True)
    assert (mon.host, mon.port, mon.tls) == ("mon.example", 1883, False)
    assert mon.keepalive_s == 90
    assert settings.storage.backend == "postgresql"


def test_bad_url_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "of.toml"
    path.write_text('[brokers.grid_ops]\nurl = "http://broker"\n')
    with pytest.raises(ConfigError, match=r"of.toml: brokers.grid_ops.url: must start with mqtt"):
        load_settings(path, environ={})


def test_bad_environment_value_names_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no openfeeder.toml here
    with pytest.raises(ConfigError, match=r"environment: brokers.grid_ops.keepalive_s"):
        load_settings(
            None,
            environ={"OPENFEEDER_BROKERS__GRID_OPS__KEEPALIVE_S": "soon"},
        )


def test_unknown_setting(tmp_path: Path) -> None:
    path = tmp_path / "of.toml"
    path.write_text("[storage]\nurll = 'sqlite:///x.db'\n")
    with pytest.raises(ConfigError, match=r"storage.urll: unknown setting"):
        load_settings(path, environ={})


def test_missing_explicit_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_password_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    path = tmp_path / "of.toml"
    path.write_text(f'[brokers.grid_ops]\nusername = "ops"\npassword_file = "{secret}"\n')
    assert load_settings(path, environ={}).brokers.grid_ops.password() == "s3cret"


def test_config_show_masks_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "of.toml"
    path.write_text('[brokers.monitoring]\nurl = "mqtt://user:hunter2@mon:1883"\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["brokers"]["monitoring"]["url"] == "mqtt://user:***@mon:1883"
    assert "hunter2" not in json.dumps(shown)


def test_service_sections_and_storage_fallback(tmp_path: Path) -> None:
    path = tmp_path / "of.toml"
    path.write_text(
        '[storage]\nurl = "sqlite:///shared.db"\n'
        '[catalog]\nurl = "http://catalog.example:8700/"\ndisconnect_timeout_s = 5\n'
        '[historian]\nstorage_url = "postgresql://of@db/of"\nretention_days = 30\n'
        "[agent]\nbuffer_max_messages = 5000\n"
    )
    settings = load_settings(path, environ={})
    assert settings.catalog.url == "http://catalog.example:8700"
    assert settings.catalog_storage_url() == "sqlite:///shared.db"
    assert settings.historian_storage_url() == "postgresql://of@db/of"
    assert settings.historian.retention_days == 30
    assert settings.agent.buffer_max_messages == 5000


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OPENFEEDER_CATALOG__URL", "ftp://x", "environment: catalog.url: must be an http"),
        ("OPENFEEDER_HISTORIAN__STORAGE_URL", "mysql://x", "historian.storage_url: must start"),
        ("OPENFEEDER_AGENT__BUFFER_MAX_MESSAGES", "3", "agent.buffer_max_messages"),
    ],
)
def test_service_section_errors_name_the_key(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={variable: value})
