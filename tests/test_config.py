"""Configuration and the command line: bad values stop start-up with a message naming them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from signaling.auth import Authenticator
from signaling.config import ConfigError, Settings, load_settings
from signaling.server import secret_or_generated


def test_defaults() -> None:
    s = load_settings()
    assert s.store_url == "memory://" and s.max_wait_s == 180 and s.grace_s == 20
    assert s.dispatch().first_wave == s.first_wave and str(s.ring_window().start) == "08:00:00"


def test_environment_then_file_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('max_wait_s = 90\nfirst_wave = 3\nstun_urls = ["stun:stun.example.org"]\n')
    monkeypatch.setenv("VABROKER_FIRST_WAVE", "7")
    s = load_settings(config)
    assert (s.max_wait_s, s.first_wave, s.stun_urls) == (90, 7, ["stun:stun.example.org"])
    assert load_settings(config, first_wave=9).first_wave == 9


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("VABROKER_MAX_WAIT_S", "-5", "VABROKER_MAX_WAIT_S"),
        ("VABROKER_MAX_WAIT_S", "forever", "VABROKER_MAX_WAIT_S"),
        ("VABROKER_PORT", "70000", "VABROKER_PORT"),
        ("VABROKER_RING_WINDOW_START", "8am", "VABROKER_RING_WINDOW_START"),
        ("VABROKER_STORE_URL", "localhost", "VABROKER_STORE_URL"),
        ("VABROKER_TURN_URLS", '["turn:t.example.org"]', "turn_secret"),
        ("VABROKER_STUN_URLS", '["http://x"]', "VABROKER_STUN_URLS"),
        ("VABROKER_STUN_URLS", "not json", "VABROKER_STUN_URLS"),
        ("VABROKER_JWT_ALGORITHMS", '["none"]', "VABROKER_JWT_ALGORITHMS"),
        ("VABROKER_LOG_LEVEL", "LOUD", "VABROKER_LOG_LEVEL"),
    ],
)
def test_bad_environment_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert needle in str(err.value) or needle.lower() in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_wait_s = [", "not valid TOML"),
        ("mystery = 1", "unknown setting(s) mystery"),
        ('max_wait_s = "soon"', "max_wait_s"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert needle in str(err.value) and (
        str(config) in str(err.value) or "configuration" in str(err.value)
    )


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(tmp_path / "absent.toml")


def test_public_key_from_a_file_that_does_not_exist(tmp_path: Path) -> None:
    s = load_settings(jwt_public_key=str(tmp_path / "missing.pem"), jwt_algorithms=["RS256"])
    with pytest.raises(ConfigError, match="jwt_public_key"):
        s.public_key_pem()


def test_unsigned_tokens_are_never_accepted() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        Authenticator()


# --- the command line -------------------------------------------------------------------------

VABROKER = [sys.executable, "-m", "clients.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VABROKER_")}
    full_env.update(env or {})
    return subprocess.run(
        [*VABROKER, *args], capture_output=True, text=True, timeout=60, env=full_env
    )


def test_token_command_mints_a_verifiable_token() -> None:
    secret = "cli-secret-0123456789abcdef0123456789"
    out = run_cli(
        "token",
        "--role",
        "volunteer",
        "--sub",
        "vol1",
        "--name",
        "Val",
        "--lang",
        "en,fr",
        "--tz",
        "Europe/London",
        env={"VABROKER_JWT_SECRET": secret},
    )
    assert out.returncode == 0, out.stderr
    claims = Authenticator(secret=secret).verify(out.stdout.strip())
    assert (claims.sub, claims.role.value, claims.languages, claims.zoneinfo) == (
        "vol1",
        "volunteer",
        ["en", "fr"],
        "Europe/London",
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tz", "Nowhere/Land"], "--tz"),
        (["--lang", "english"], "--lang"),
    ],
)
def test_token_command_rejects_bad_flags(args: list[str], needle: str) -> None:
    out = run_cli(
        "token", "--role", "volunteer", "--sub", "v", *args, env={"VABROKER_JWT_SECRET": "s" * 32}
    )
    assert out.returncode == 2 and needle in out.stderr


def test_token_command_needs_the_secret() -> None:
    out = run_cli("token", "--role", "volunteer", "--sub", "v")
    assert out.returncode == 2 and "VABROKER_JWT_SECRET" in out.stderr


def test_serve_refuses_bad_configuration(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("wave_growth = 0.5\n")
    out = run_cli("serve", "--config", str(config))
    assert (
        out.returncode == 2 and "wave_growth" in out.stderr and "VABROKER_WAVE_GROWTH" in out.stderr
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_generates_a_secret_serves_and_shuts_down(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VABROKER_")}
    env["XDG_DATA_HOME"] = str(tmp_path)  # the default data directory, not the user's own
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*VABROKER, "serve", "--port", str(port)], stdout=sink, stderr=sink, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while "listening" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        assert "export VABROKER_JWT_SECRET=" in log.read_text()
        # With no store named, the durable store in the default data directory.
        assert (tmp_path / "vabroker" / "broker.db").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()


def test_a_generated_secret_is_kept_beside_the_durable_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("VABROKER_JWT_SECRET", "VABROKER_JWT_PUBLIC_KEY"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite://{tmp_path}/data/broker.db"
    first = secret_or_generated(Settings(store_url=url)).jwt_secret
    again = secret_or_generated(Settings(store_url=url)).jwt_secret
    assert first is not None and again is not None
    # A restart keeps its tokens valid, and erased people's pseudonyms the same.
    assert first.get_secret_value() == again.get_secret_value()
    kept = tmp_path / "data" / "jwt_secret"
    assert kept.read_text().strip() == first.get_secret_value()
    assert kept.stat().st_mode & 0o777 == 0o600
    said = capsys.readouterr().err
    assert f"generated and kept in {kept}" in said and f"read from {kept}" in said
    # In memory there is nothing to keep: each run has its own.
    one = secret_or_generated(Settings(store_url="memory://")).jwt_secret
    two = secret_or_generated(Settings(store_url="memory://")).jwt_secret
    assert one is not None and two is not None
    assert one.get_secret_value() != two.get_secret_value()
