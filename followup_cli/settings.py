"""FOLLOWUPS_* environment variables (and command-line overrides) -> one validated Settings.

Every value is checked here, at start, so that a bad value is one clear line and exit
code 2 before anything touches the database or APNs.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from followup_cli.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///followups.db"
# FOLLOWUPS_PUSH: log, or the push services to use, in this order when both are given.
PUSH_SERVICES = ("apns", "fcm")
PUSH_BACKENDS = ("log", "apns", "fcm", "apns,fcm")
FCM_DEFAULT_URL = "https://fcm.googleapis.com"
# A Google Cloud project id (FOLLOWUPS_FCM_PROJECT_ID, or the key file's project_id).
FCM_PROJECT_ID = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")
APNS_ENVIRONMENTS = ("production", "development")
LOG_FORMATS = ("text", "json")
# What a push shows on the lock screen: the message itself, or a fixed text.
PUSH_BODIES = ("full", "generic")
DEFAULT_GENERIC_TEXT = "You have a new message from your care team"
# How both the full path (SQLAlchemy) and the idle run (bare psycopg / sqlite3) connect:
# no prepared statements (PgBouncer / Supavisor transaction pooling), an unreachable
# server fails fast, and the connection is named in pg_stat_activity.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "prepare_threshold": None,
    "connect_timeout": 10,
    "application_name": "followups",
}
# How long a SQLite connection waits for another run's write lock.
SQLITE_BUSY_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    push: str = "log"
    apns_key_file: Path | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    apns_env: str = "production"
    apns_url: str | None = None
    apns_ca_file: Path | None = None
    fcm_credentials_file: Path | None = None
    # None: the credentials file's project_id.
    fcm_project_id: str | None = None
    fcm_url: str = FCM_DEFAULT_URL
    fcm_ca_file: Path | None = None
    # Notifications in flight at once per push service (HTTP/2 streams on its connection).
    push_concurrency: int = 200
    push_timeout_seconds: float = 10.0
    # First backoff step between push attempts; the steps double, with full jitter.
    retry_base_seconds: float = 0.5
    lease_seconds: int = 120
    # How stale the "was it cancelled meanwhile?" check before a push may be.
    cancel_check_seconds: float = 0.2
    batch_size: int = 1000
    # A follow-up whose attempts all failed for transient reasons stays scheduled and is
    # tried again by a later run after this pause, doubling per try up to
    # MAX_RETRY_PAUSE; it is marked failed once its tries span give_up_after.
    retry_pause: timedelta = timedelta(minutes=1)
    give_up_after: timedelta = timedelta(hours=6)
    # This many failed push attempts in a row (5xx, timeouts, connection failures) means
    # APNs is down: the run stops and leaves the rest scheduled.
    outage_threshold: int = 5
    # generic: the push carries PUSH_GENERIC_TEXT instead of the message (the in-app
    # message keeps the full text).
    push_body: str = "full"
    push_generic_text: str = DEFAULT_GENERIC_TEXT
    alert_webhook_url: str | None = None
    # An alert that lasts is posted again (a reminder) once this long has passed since
    # its last post; its end is posted once ("resolved").
    alert_repeat_interval: timedelta = timedelta(hours=4)
    heartbeat_url: str | None = None
    pushgateway_url: str | None = None
    # stats --check and the success-rate alert.
    check_min_success_rate: float = 95.0
    check_min_attempts: int = 20
    check_max_run_age: timedelta = timedelta(minutes=5)
    check_max_overdue: timedelta = timedelta(minutes=10)
    log_format: str = "text"

    @property
    def push_services(self) -> tuple[str, ...]:
        """The push services FOLLOWUPS_PUSH turns on; empty for the log backend."""
        return () if self.push == "log" else tuple(self.push.split(","))

    @property
    def safe_database_url(self) -> str:
        """The database URL with any password replaced by ***, for messages."""
        return redact_url(self.database_url)

    def with_overrides(self, **values: object) -> Settings:
        """A copy with the given non-None values replaced, validated again."""
        changed = {k: v for k, v in values.items() if v is not None}
        return validate(replace(self, **changed)) if changed else self  # type: ignore[arg-type]


# -- database URLs ---------------------------------------------------------------------

# What may follow the user-info's "@": host[:port][/dbname][?query]. The host is a name or
# address (letters, digits, . - _), or an IPv6 address in brackets; empty for the default
# Unix socket. No "@" in any of it: were one allowed in the dbname or query, an earlier
# "@" in the password would end the user-info and put the password's tail in the host.
_AFTER_AT = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+(?:%[A-Za-z0-9._~%-]+)?)\]|(?P<host>[A-Za-z0-9._-]*))"
    r"(?::(?P<port>[0-9]+))?(?:/(?P<database>[^?@]*))?(?:\?(?P<query>[^@]*))?",
)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9.]*)(?:\+([A-Za-z0-9_]+))?://")
# Characters the rendered user-info keeps as they are (RFC 3986 unreserved and
# sub-delims); every other one is percent-encoded, so any URL parser reads it back.
_USERINFO_SAFE = "!$&'()*+,;="
_DATABASE_SAFE = "!$&'()*+,;=:/"
_QUERY_PASSWORD = re.compile(r"([?&])password=[^&]*")
_QUOTING_HINT = (
    "if the password has @ : / % or ?, percent-encode them (@ is %40, : is %3A, / is %2F, % is %25)"
)
# A password shorter than this is not scrubbed from messages: replacing every "abc" in
# an error would garble it and hide nothing a guess would not find.
_MIN_SCRUBBED = 4


@dataclass(frozen=True)
class DatabaseURL:
    """A PostgreSQL URL in parts, user, password and dbname percent-decoded: what the
    engine is built from, so that the password reaches the driver as it was written."""

    username: str | None
    password: str | None = field(repr=False)
    host: str | None
    port: int | None
    database: str | None
    # The query as written: the driver's connect arguments (libpq also takes a password
    # there).
    query_text: str | None = field(default=None, repr=False)
    drivername: str = "postgresql+psycopg"

    @property
    def query(self) -> dict[str, str | tuple[str, ...]]:
        """The query's arguments, a repeated one as a tuple (as SQLAlchemy reads them)."""
        found: dict[str, list[str]] = {}
        for key, value in parse_qsl(self.query_text or ""):
            found.setdefault(key, []).append(value)
        return {k: v[0] if len(v) == 1 else tuple(v) for k, v in found.items()}

    def render(self, *, hide_password: bool = False) -> str:
        """The URL with user and password percent-encoded, so that every parser (this
        one, SQLAlchemy's, libpq's) reads the same parts back; *** for the password."""
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe=_USERINFO_SAFE)
            if self.password is not None:
                secret = "***" if hide_password else quote(self.password, safe=_USERINFO_SAFE)
                userinfo += f":{secret}"
            userinfo += "@"
        host = self.host or ""
        if ":" in host:
            host = f"[{quote(host, safe=':.')}]"
        port = f":{self.port}" if self.port is not None else ""
        database = f"/{quote(self.database, safe=_DATABASE_SAFE)}" if self.database else ""
        query = "" if self.query_text is None else f"?{self.query_text}"
        if hide_password:
            query = _QUERY_PASSWORD.sub(r"\1password=***", query)
        return f"{self.drivername}://{userinfo}{host}{port}{database}{query}"

    @property
    def password_forms(self) -> tuple[str, ...]:
        """The texts that would give the password away in a message: as it is, and
        percent-encoded as this tool, SQLAlchemy and a strict encoder write it."""
        secrets = [self.password, self.query.get("password")]
        forms = {
            form
            for secret in secrets
            if isinstance(secret, str) and len(secret) >= _MIN_SCRUBBED
            for form in (
                secret,
                quote(secret, safe=""),
                quote(secret, safe=_USERINFO_SAFE),
                quote(secret, safe=" +"),
                quote_plus(secret),
            )
        }
        # Longest first, so that no shorter form breaks a longer one up before it is seen.
        return tuple(sorted(forms, key=len, reverse=True))


def parse_database_url(url: str) -> DatabaseURL | None:
    """FOLLOWUPS_DATABASE_URL in parts; None for a sqlite URL, which is used as written.

    postgres:// and postgresql:// (as hosting providers hand them out) get the psycopg
    driver; other backends and drivers are refused. The password may hold @ : / % ? #
    as they are: the user-info ends at the last "@", and what follows it must be a
    plausible host[:port][/dbname][?query] (an "@" there is written %40). User, password
    and dbname are percent-decoded (RFC 3986; a "%" without two hex digits after it
    stays as it is): a password that holds "%41" itself must write it "%2541". Raises
    ConfigError, whose message never holds any part of the URL after the scheme."""
    match = _SCHEME.match(url)
    if not match:
        raise ConfigError(
            "FOLLOWUPS_DATABASE_URL is not a database URL "
            "(expected sqlite:///path or postgresql+psycopg://user@host/db)"
        )
    backend, driver = match.group(1).lower(), (match.group(2) or "").lower()
    if backend == "sqlite":
        return None
    if backend in ("postgres", "postgresql") and not driver:
        driver = "psycopg"
    elif backend != "postgresql":
        raise ConfigError(
            f"FOLLOWUPS_DATABASE_URL must be a sqlite or postgresql URL, got {backend!r}"
        )
    if driver != "psycopg":
        raise ConfigError(
            "FOLLOWUPS_DATABASE_URL must use the psycopg driver (postgresql+psycopg://...), "
            f"got {driver!r}"
        )
    rest = url[match.end() :]
    # The user-info ends at the last "@": what follows it holds none.
    userinfo, at, host_part = rest.rpartition("@")
    after = _AFTER_AT.fullmatch(host_part)
    if after is None:
        raise _unparsable(_why_unparsable(host_part))
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = _decode(user_text, "user name") or None
        password = _decode(password_text, "password") if colon else None
    # A bracketed IPv6 address's zone (fe80::1%25eth0) is percent-encoded like the rest.
    host = unquote(after.group("ipv6") or "") or after.group("host") or None
    query_text = after.group("query")
    if password is not None and host is None and "host" not in _query_keys(query_text):
        raise _unparsable("the host is empty; for a Unix socket give it as ?host=/socket/dir")
    port = int(after.group("port")) if after.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise _unparsable("the port is not between 1 and 65535")
    database = _decode(after.group("database") or "", "database name") or None
    return DatabaseURL(username, password, host, port, database, query_text)


def _query_keys(query_text: str | None) -> set[str]:
    return {key for key, _ in parse_qsl(query_text or "", keep_blank_values=True)}


def _decode(text: str, what: str) -> str:
    """Percent-decoded; a "%" without two hex digits after it stays as it is."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _unparsable(f"the {what} has a %XX sequence that is not UTF-8") from None


def _why_unparsable(host_part: str) -> str:
    """Why what follows the user-info is not host[:port][/dbname][?query], in words that
    quote none of it."""
    authority = re.split(r"[/?]", host_part, maxsplit=1)[0]
    if authority.startswith("["):
        closed, bracket, port = authority.partition("]")
        if not bracket or not re.fullmatch(r"\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9._~%-]+)?", closed):
            return "the IPv6 host is not an address in [ ]"
        return "the port is not a number" if port[:1] == ":" else "the host is malformed"
    host, colon, port = authority.partition(":")
    if colon and not re.fullmatch("[0-9]+", port):
        return "the port is not a number"
    if not re.fullmatch(r"[A-Za-z0-9._-]*", host):
        return "the host has characters a host name cannot have"
    return "it is not scheme://user:password@host:port/dbname"


def _unparsable(reason: str) -> ConfigError:
    return ConfigError(
        f"FOLLOWUPS_DATABASE_URL is not a valid database URL ({reason}); {_QUOTING_HINT}"
    )


def normalize_database_url(url: str) -> str:
    """The URL the rest of the tool is given: a sqlite one as it is, a PostgreSQL one
    with the psycopg driver and its user and password percent-encoded (so that the idle
    run's bare driver reads the same parts as the engine). Raises ConfigError."""
    parsed = parse_database_url(url)
    return url if parsed is None else parsed.render()


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for messages."""
    try:
        parsed = parse_database_url(url)
    except ConfigError:
        return "<unparseable URL>"
    return url if parsed is None else parsed.render(hide_password=True)


@dataclass(frozen=True)
class Variable:
    """One FOLLOWUPS_* variable: the Settings field it sets, how its text is read, and
    the smallest and largest values allowed (numbers only; durations are bounded by
    MAX_DURATION). Its default is the field's default and nowhere else."""

    name: str
    field: str
    kind: str = "text"  # text, lower (case folded), path, int, float, duration, duration_or_zero
    minimum: float = 0
    maximum: float = math.inf


VARIABLES = (
    Variable("FOLLOWUPS_DATABASE_URL", "database_url"),
    Variable("FOLLOWUPS_PUSH", "push", "lower"),
    Variable("FOLLOWUPS_PUSH_BODY", "push_body", "lower"),
    Variable("FOLLOWUPS_PUSH_GENERIC_TEXT", "push_generic_text"),
    Variable("FOLLOWUPS_APNS_KEY_FILE", "apns_key_file", "path"),
    Variable("FOLLOWUPS_APNS_KEY_ID", "apns_key_id"),
    Variable("FOLLOWUPS_APNS_TEAM_ID", "apns_team_id"),
    Variable("FOLLOWUPS_APNS_TOPIC", "apns_topic"),
    Variable("FOLLOWUPS_APNS_ENV", "apns_env", "lower"),
    Variable("FOLLOWUPS_APNS_URL", "apns_url"),
    Variable("FOLLOWUPS_APNS_CA_FILE", "apns_ca_file", "path"),
    Variable("FOLLOWUPS_FCM_CREDENTIALS_FILE", "fcm_credentials_file", "path"),
    Variable("FOLLOWUPS_FCM_PROJECT_ID", "fcm_project_id"),
    Variable("FOLLOWUPS_FCM_URL", "fcm_url"),
    Variable("FOLLOWUPS_FCM_CA_FILE", "fcm_ca_file", "path"),
    Variable("FOLLOWUPS_PUSH_CONCURRENCY", "push_concurrency", "int", 1, 1000),
    Variable("FOLLOWUPS_PUSH_TIMEOUT", "push_timeout_seconds", "float", 0.1, 300),
    Variable("FOLLOWUPS_RETRY_BASE_SECONDS", "retry_base_seconds", "float", 0.0, 60),
    Variable("FOLLOWUPS_LEASE_SECONDS", "lease_seconds", "int", 10, 86400),
    Variable("FOLLOWUPS_CANCEL_CHECK_SECONDS", "cancel_check_seconds", "float", 0.0, 60),
    Variable("FOLLOWUPS_BATCH_SIZE", "batch_size", "int", 1, 10000),
    Variable("FOLLOWUPS_RETRY_PAUSE", "retry_pause", "duration"),
    Variable("FOLLOWUPS_GIVE_UP_AFTER", "give_up_after", "duration_or_zero"),
    Variable("FOLLOWUPS_OUTAGE_THRESHOLD", "outage_threshold", "int", 1, 1000),
    Variable("FOLLOWUPS_ALERT_WEBHOOK_URL", "alert_webhook_url"),
    Variable("FOLLOWUPS_ALERT_REPEAT_INTERVAL", "alert_repeat_interval", "duration"),
    Variable("FOLLOWUPS_HEARTBEAT_URL", "heartbeat_url"),
    Variable("FOLLOWUPS_PUSHGATEWAY_URL", "pushgateway_url"),
    Variable("FOLLOWUPS_CHECK_MIN_SUCCESS_RATE", "check_min_success_rate", "float", 0.0, 100),
    Variable("FOLLOWUPS_CHECK_MIN_ATTEMPTS", "check_min_attempts", "int", 1, 1_000_000),
    Variable("FOLLOWUPS_CHECK_MAX_RUN_AGE", "check_max_run_age", "duration"),
    Variable("FOLLOWUPS_CHECK_MAX_OVERDUE", "check_max_overdue", "duration"),
    Variable("FOLLOWUPS_LOG_FORMAT", "log_format", "lower"),
)
_SETTINGS_DEFAULTS = {f.name: f.default for f in fields(Settings)}


def default(field_name: str) -> Any:
    """A Settings field's default, e.g. for a command-line option's help text."""
    return _SETTINGS_DEFAULTS[field_name]


def show_default(value: object) -> str:
    """A default as the README and the help texts write it: 10 (not 10.0), 5m, text."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _read(var: Variable, raw: str) -> object:
    """The variable's value from its (non-blank) text. Raises ConfigError."""
    text = raw.strip()
    if var.kind == "lower":
        return text.lower()
    if var.kind == "path":
        return Path(text)
    if var.kind == "duration":
        return parse_duration(raw, var.name)
    if var.kind == "duration_or_zero":
        return parse_duration(raw, var.name, allow_zero=True)
    if var.kind in ("int", "float"):
        try:
            number: float = int(text) if var.kind == "int" else float(text)
        except ValueError:
            number = math.nan
        if math.isnan(number):  # inf is refused by the maximum
            what = "a whole number" if var.kind == "int" else "a number"
            raise ConfigError(f"{var.name} must be {what}, got {raw!r}") from None
        _check_range(var, number)
        return number
    return text


def _check_range(var: Variable, number: float) -> None:
    """Numbers outside [minimum, maximum] are refused, a huge one before any timedelta or
    SQL LIMIT overflows on it."""
    if number < var.minimum:
        raise ConfigError(f"{var.name} must be at least {show_default(var.minimum)}, got {number}")
    if number > var.maximum:
        # A 30-digit number is not echoed whole.
        got = str(number) if len(str(number)) <= 15 else "a larger number"
        raise ConfigError(f"{var.name} must be at most {show_default(var.maximum)}, got {got}")


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Read FOLLOWUPS_* variables; an unset or blank one keeps its default. Raises
    ConfigError on the first bad value."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = env.get(var.name)
        if raw is not None and raw.strip():
            values[var.field] = _read(var, raw)
    return validate(Settings(**values))


def validate(s: Settings) -> Settings:
    url = normalize_database_url(s.database_url)
    if url != s.database_url:
        s = replace(s, database_url=url)
    push = _canonical_push(s.push)
    if push != s.push:
        s = replace(s, push=push)
    if s.apns_env not in APNS_ENVIRONMENTS:
        raise ConfigError(
            f"FOLLOWUPS_APNS_ENV must be one of {', '.join(APNS_ENVIRONMENTS)}, got {s.apns_env!r}"
        )
    if s.push_body not in PUSH_BODIES:
        raise ConfigError(
            f"FOLLOWUPS_PUSH_BODY must be one of {', '.join(PUSH_BODIES)}, got {s.push_body!r}"
        )
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"log format must be one of {', '.join(LOG_FORMATS)}, got {s.log_format!r}"
        )
    if s.apns_url is not None and not re.match(r"^https://[^/\s]+/?$", s.apns_url):
        raise ConfigError(
            f"FOLLOWUPS_APNS_URL must look like https://host[:port], got {s.apns_url!r}"
        )
    if s.fcm_url is not None and not re.match(r"^https://[^/\s]+/?$", s.fcm_url):
        raise ConfigError(
            f"FOLLOWUPS_FCM_URL must look like https://host[:port], got {s.fcm_url!r}"
        )
    if s.fcm_project_id is not None and not FCM_PROJECT_ID.fullmatch(s.fcm_project_id):
        raise ConfigError(
            f"FOLLOWUPS_FCM_PROJECT_ID is not a Google Cloud project id, got {s.fcm_project_id!r}"
        )
    if s.alert_webhook_url is not None and not re.match(r"^https?://\S+$", s.alert_webhook_url):
        # The URL is a secret: name the problem, never echo the value.
        raise ConfigError("FOLLOWUPS_ALERT_WEBHOOK_URL must be an http(s) URL")
    if s.heartbeat_url is not None and not re.match(r"^https?://\S+$", s.heartbeat_url):
        raise ConfigError("FOLLOWUPS_HEARTBEAT_URL must be an http(s) URL")
    if s.pushgateway_url is not None and not re.match(r"^https?://\S+$", s.pushgateway_url):
        raise ConfigError("FOLLOWUPS_PUSHGATEWAY_URL must be an http(s) URL")
    if s.check_min_success_rate > 100:
        raise ConfigError(
            f"FOLLOWUPS_CHECK_MIN_SUCCESS_RATE must be a percentage, got {s.check_min_success_rate}"
        )
    # The numbers again, as command-line overrides (send-due --batch-size) set them too.
    for var in VARIABLES:
        if var.kind in ("int", "float"):
            _check_range(var, getattr(s, var.field))
    return s


def _canonical_push(value: str) -> str:
    """log, apns, fcm or apns,fcm: either order, spaces forgiven, each service once."""
    names = [part.strip() for part in value.split(",")]
    if names == ["log"]:
        return "log"
    if names and all(n in PUSH_SERVICES for n in names) and len(set(names)) == len(names):
        return ",".join(n for n in PUSH_SERVICES if n in names)
    raise ConfigError(f"FOLLOWUPS_PUSH must be log, apns, fcm or apns,fcm, got {value!r}")


def require_push_config(s: Settings, *, load_key: bool = True) -> None:
    """For commands that push: with FOLLOWUPS_PUSH=apns the key, ids and topic must be
    there and the key must load; with fcm, the service account's key file must hold a
    usable key and a project id must be known. All before anything is claimed. (The idle
    run, which claims nothing, skips loading the keys: that import alone costs a tenth of
    its time.)"""
    if "apns" in s.push_services:
        _check_apns(s, load_key)
    if "fcm" in s.push_services:
        read_fcm_credentials(s, load_key=load_key)


def read_fcm_credentials(s: Settings, *, load_key: bool = True) -> tuple[dict[str, Any], str]:
    """The service account's key file as a dict, and the project to send through: FCM's
    own reading (push.fcm.credentials), imported only when FCM is on."""
    from followup_cli.push.fcm.credentials import read_fcm_credentials as read

    return read(s, load_key=load_key)


def _check_apns(s: Settings, load_key: bool) -> None:
    missing = [
        name
        for name, value in (
            ("FOLLOWUPS_APNS_KEY_FILE", s.apns_key_file),
            ("FOLLOWUPS_APNS_KEY_ID", s.apns_key_id),
            ("FOLLOWUPS_APNS_TEAM_ID", s.apns_team_id),
            ("FOLLOWUPS_APNS_TOPIC", s.apns_topic),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(f"FOLLOWUPS_PUSH={s.push} needs {', '.join(missing)}")
    assert s.apns_key_file is not None
    try:
        pem = s.apns_key_file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"FOLLOWUPS_APNS_KEY_FILE {str(s.apns_key_file)!r} cannot be read: {exc.strerror}"
        ) from None
    if not load_key:
        return
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"FOLLOWUPS_APNS_KEY_FILE {str(s.apns_key_file)!r} is not a PEM (.p8) private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(
            f"FOLLOWUPS_APNS_KEY_FILE {str(s.apns_key_file)!r} is not an ES256 (P-256) APNs key"
        )
    from cryptography.exceptions import UnsupportedAlgorithm

    from followup_cli.push.provider_token import ProviderToken

    try:  # every host must sign the same token: deterministic ECDSA (RFC 6979)
        ProviderToken(key, s.apns_key_id or "", s.apns_team_id or "").sign(0)
    except UnsupportedAlgorithm:
        raise ConfigError(
            "this host's cryptography library cannot sign deterministically (RFC 6979); "
            "install cryptography 44 or later, built with OpenSSL 3.2 or later"
        ) from None
    if s.apns_ca_file is not None and not s.apns_ca_file.is_file():
        raise ConfigError(f"FOLLOWUPS_APNS_CA_FILE {str(s.apns_ca_file)!r} is not a readable file")


_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
# The longest duration taken anywhere: now minus (or plus) it is still a valid time, and
# no window, pause or age a person means is longer.
MAX_DURATION_YEARS = 100
MAX_DURATION = timedelta(days=365 * MAX_DURATION_YEARS + MAX_DURATION_YEARS // 4)


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration: timedelta(minutes=5) -> '5m'."""
    seconds = int(value.total_seconds())
    for unit, size in _DURATION_UNITS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("a whole number of seconds is always divisible by 1")


def parse_duration(text: str, option: str = "duration", *, allow_zero: bool = False) -> timedelta:
    """'30m', '24h', '7d', '90s' -> timedelta (and '0s' when `allow_zero`). Raises
    ConfigError on anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not match:
        raise ConfigError(
            f"{option} must be a number followed by s, m, h, d or w (e.g. 30m, 24h, 7d), "
            f"got {text!r}"
        )
    amount, unit = int(match.group(1)), match.group(2)
    seconds = _DURATION_UNITS[unit]
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ConfigError(f"{option} must be greater than zero, got {text!r}")
    if amount * seconds > MAX_DURATION.total_seconds():
        raise ConfigError(f"{option} is too long (at most {MAX_DURATION_YEARS} years)")
    return timedelta(seconds=amount * seconds)
