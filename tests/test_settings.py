"""Configuration: FOLLOWUPS_* parsing and validation."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from followup_cli.settings import (
    ConfigError,
    from_env,
    parse_duration,
    read_fcm_credentials,
    redact_url,
    require_push_config,
)


def test_defaults_are_embedded_sqlite_and_log_backend() -> None:
    """With nothing set, the tool runs on a local SQLite file and pushes nothing."""
    s = from_env({})
    assert s.database_url == "sqlite:///followups.db"
    assert s.push == "log"
    assert s.lease_seconds == 120


def test_postgres_urls_from_hosting_providers_get_the_psycopg_driver() -> None:
    """postgres:// and postgresql:// become postgresql+psycopg://."""
    assert from_env({"FOLLOWUPS_DATABASE_URL": "postgres://u:p@h/db"}).database_url == (
        "postgresql+psycopg://u:p@h/db"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FOLLOWUPS_PUSH": "sms"}, "FOLLOWUPS_PUSH must be log, apns, fcm or apns,fcm, got 'sms'"),
        ({"FOLLOWUPS_APNS_ENV": "staging"}, "FOLLOWUPS_APNS_ENV must be one of"),
        ({"FOLLOWUPS_LEASE_SECONDS": "soon"}, "FOLLOWUPS_LEASE_SECONDS must be a whole number"),
        ({"FOLLOWUPS_LEASE_SECONDS": "5"}, "FOLLOWUPS_LEASE_SECONDS must be at least 10"),
        ({"FOLLOWUPS_BATCH_SIZE": "-1"}, "FOLLOWUPS_BATCH_SIZE must be at least 1"),
        ({"FOLLOWUPS_DATABASE_URL": "mysql://x/y"}, "must be a sqlite or postgresql URL"),
        ({"FOLLOWUPS_DATABASE_URL": "not a url"}, "is not a database URL"),
        ({"FOLLOWUPS_APNS_URL": "http://insecure"}, "FOLLOWUPS_APNS_URL must look like https"),
    ],
)
def test_bad_values_are_one_clear_message(env: dict[str, str], message: str) -> None:
    """Each bad value names the variable and what it expects."""
    with pytest.raises(ConfigError) as info:
        from_env(env)
    assert message in str(info.value)


def test_webhook_url_is_never_echoed_in_its_error() -> None:
    """A malformed webhook URL is reported without its (secret) value."""
    with pytest.raises(ConfigError) as info:
        from_env({"FOLLOWUPS_ALERT_WEBHOOK_URL": "hooks.slack.com/services/SECRET"})
    assert "SECRET" not in str(info.value)


def test_password_is_hidden_in_printed_url() -> None:
    """The database password never appears in what the tool prints."""
    shown = redact_url("postgresql+psycopg://app:hunter2@db.example.com/prod")
    assert "hunter2" not in shown
    assert "db.example.com" in shown


def test_apns_needs_key_ids_and_topic() -> None:
    """FOLLOWUPS_PUSH=apns without credentials names every missing variable."""
    s = from_env({"FOLLOWUPS_PUSH": "apns"})
    with pytest.raises(ConfigError) as info:
        require_push_config(s)
    for name in ("KEY_FILE", "KEY_ID", "TEAM_ID", "TOPIC"):
        assert f"FOLLOWUPS_APNS_{name}" in str(info.value)


def test_apns_key_must_be_readable_pem(tmp_path: Path) -> None:
    """A missing or non-key file is a configuration error, not a crash at push time."""
    base = {
        "FOLLOWUPS_PUSH": "apns",
        "FOLLOWUPS_APNS_KEY_ID": "K",
        "FOLLOWUPS_APNS_TEAM_ID": "T",
        "FOLLOWUPS_APNS_TOPIC": "com.example",
    }
    missing = from_env({**base, "FOLLOWUPS_APNS_KEY_FILE": str(tmp_path / "nope.p8")})
    with pytest.raises(ConfigError, match="cannot be read"):
        require_push_config(missing)
    junk = tmp_path / "junk.p8"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match="is not a PEM"):
        require_push_config(from_env({**base, "FOLLOWUPS_APNS_KEY_FILE": str(junk)}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", timedelta(minutes=30)), ("24h", timedelta(hours=24)), ("7d", timedelta(days=7))],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    """Durations are a number and a unit."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "1.5h", "-3h", "0m", "3 days"])
def test_parse_duration_rejects_malformed(text: str) -> None:
    """Anything else is a usage error."""
    with pytest.raises(ConfigError):
        parse_duration(text, "--since")


@pytest.mark.parametrize(
    ("value", "push", "services"),
    [
        ("log", "log", ()),
        ("apns", "apns", ("apns",)),
        ("FCM", "fcm", ("fcm",)),
        ("apns,fcm", "apns,fcm", ("apns", "fcm")),
        ("fcm, apns", "apns,fcm", ("apns", "fcm")),
    ],
)
def test_push_names_one_or_both_services(value: str, push: str, services: tuple[str, ...]) -> None:
    """FOLLOWUPS_PUSH: log, apns, fcm, or both in either order."""
    s = from_env({"FOLLOWUPS_PUSH": value})
    assert (s.push, s.push_services) == (push, services)


@pytest.mark.parametrize("value", ["apns,apns", "log,apns", "apns,", "gcm"])
def test_push_refuses_anything_else(value: str) -> None:
    with pytest.raises(ConfigError, match="FOLLOWUPS_PUSH must be log, apns, fcm or apns,fcm"):
        from_env({"FOLLOWUPS_PUSH": value})


def _service_account(path: Path, **changes: object) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info: dict[str, object] = {
        "type": "service_account",
        "project_id": "clara-parents",
        "private_key": pem,
        "client_email": "followups@clara-parents.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    info.update(changes)
    path.write_text(json.dumps({k: v for k, v in info.items() if v is not None}))
    return path


def test_fcm_project_defaults_to_the_key_files(tmp_path: Path) -> None:
    """The project comes from the key file unless FOLLOWUPS_FCM_PROJECT_ID says otherwise."""
    key = _service_account(tmp_path / "sa.json")
    env = {"FOLLOWUPS_PUSH": "fcm", "FOLLOWUPS_FCM_CREDENTIALS_FILE": str(key)}
    assert read_fcm_credentials(from_env(env))[1] == "clara-parents"
    other = from_env({**env, "FOLLOWUPS_FCM_PROJECT_ID": "clara-staging"})
    assert read_fcm_credentials(other)[1] == "clara-staging"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "authorized_user"}, 'is not a service account key file ("type"'),
        ({"client_email": None, "private_key": ""}, "has no client_email, private_key"),
        ({"token_uri": "http://plain"}, "token_uri must be an https URL"),
        ({"project_id": None}, "FOLLOWUPS_FCM_PROJECT_ID is not set and"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n"}, "private_key is not a PEM"),
    ],
)
def test_fcm_key_file_problems_are_one_line_without_secrets(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    """Each problem of the key file names the file and the field, never its values."""
    key = _service_account(tmp_path / "sa.json", **changes)
    s = from_env({"FOLLOWUPS_PUSH": "apns,fcm", "FOLLOWUPS_FCM_CREDENTIALS_FILE": str(key)})
    with pytest.raises(ConfigError) as info:
        read_fcm_credentials(s)
    assert message in str(info.value)
    assert "\n" not in str(info.value) and "PRIVATE KEY" not in str(info.value)


def test_fcm_needs_a_readable_json_key_file(tmp_path: Path) -> None:
    """Missing variable, unreadable file, not JSON: each a clear configuration error."""
    with pytest.raises(ConfigError, match="FOLLOWUPS_PUSH=fcm needs FOLLOWUPS_FCM_CREDENTIALS"):
        require_push_config(from_env({"FOLLOWUPS_PUSH": "fcm"}))
    env = {"FOLLOWUPS_PUSH": "fcm", "FOLLOWUPS_FCM_CREDENTIALS_FILE": str(tmp_path / "no.json")}
    with pytest.raises(ConfigError, match="cannot be read"):
        require_push_config(from_env(env))
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    env["FOLLOWUPS_FCM_CREDENTIALS_FILE"] = str(junk)
    with pytest.raises(ConfigError, match="is not JSON"):
        require_push_config(from_env(env))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FOLLOWUPS_FCM_URL": "http://fcm"}, "FOLLOWUPS_FCM_URL must look like https"),
        ({"FOLLOWUPS_FCM_PROJECT_ID": "a/b"}, "FOLLOWUPS_FCM_PROJECT_ID is not a Google"),
    ],
)
def test_fcm_url_and_project_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_env(env)


def test_readme_table_lists_every_variable_with_its_default() -> None:
    """Each FOLLOWUPS_* variable read here has a README row; the new defaults match."""
    import re

    from followup_cli import settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    source = Path(settings.__file__).read_text()
    for name in sorted(set(re.findall(r'"(FOLLOWUPS_[A-Z_]+)"', source))):
        assert f"| `{name}` |" in readme, name
    assert f"| `FOLLOWUPS_PUSH_BODY` | `{settings.Settings().push_body}` |" in readme
    assert f"| `FOLLOWUPS_PUSH_GENERIC_TEXT` | `{settings.DEFAULT_GENERIC_TEXT}` |" in readme


def _readme_configuration_table() -> dict[str, str]:
    """The README's configuration table: variable -> its default cell."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    return dict(re.findall(r"^\| `(FOLLOWUPS_[A-Z0-9_]+)` \| ([^|]*?) \|", readme, re.M))


def test_readme_table_lists_exactly_the_variables_the_code_reads() -> None:
    """Every FOLLOWUPS_* name in the package has a README row, and no row is stale."""
    import re

    import followup_cli

    package = Path(followup_cli.__file__).parent
    in_code = {
        name
        for path in package.rglob("*.py")
        for name in re.findall(r"\bFOLLOWUPS_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    assert in_code == set(_readme_configuration_table())


def test_every_setting_has_one_variable_and_the_readme_states_its_default() -> None:
    """One Variable per Settings field; the README's default is the field's own."""
    from dataclasses import fields

    from followup_cli.settings import VARIABLES, Settings, show_default

    table = _readme_configuration_table()
    assert sorted(v.field for v in VARIABLES) == sorted(f.name for f in fields(Settings))
    for var in VARIABLES:
        default = getattr(Settings(), var.field)
        cell = table[var.name]
        if default is None:
            # No value: the cell says in words what happens (system CAs, Apple's URL, -).
            assert not cell.startswith("`"), (var.name, cell)
        else:
            assert cell == f"`{show_default(default)}`", (var.name, cell)


def test_unset_and_blank_variables_take_the_settings_defaults() -> None:
    from followup_cli.settings import VARIABLES, Settings

    assert from_env({}) == Settings()
    assert from_env({var.name: "  " for var in VARIABLES}) == Settings()


@pytest.mark.parametrize(
    ("value", "shown"),
    [(timedelta(minutes=5), "5m"), (timedelta(hours=2), "2h"), (10.0, "10"), (0.5, "0.5")],
)
def test_defaults_are_shown_as_they_are_written(value: object, shown: str) -> None:
    from followup_cli.settings import parse_duration, show_default

    assert show_default(value) == shown
    if isinstance(value, timedelta):
        assert parse_duration(shown) == value
