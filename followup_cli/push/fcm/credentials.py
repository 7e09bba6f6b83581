"""The service account's key file (FOLLOWUPS_FCM_CREDENTIALS_FILE), read and checked.

settings.require_push_config calls this at start, so that a wrong file is one clear
line and exit code 2 before anything is claimed; the pusher reads it again to send.
Light on purpose: the idle run may call it (without loading the key)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from followup_cli.errors import ConfigError
from followup_cli.settings import FCM_PROJECT_ID

if TYPE_CHECKING:
    from followup_cli.settings import Settings

# The fields of a Google service account key file that FCM needs.
SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")


def read_fcm_credentials(s: Settings, *, load_key: bool = True) -> tuple[dict[str, Any], str]:
    """The service account's key file as a dict, and the project to send through
    (FOLLOWUPS_FCM_PROJECT_ID, else the file's project_id). Errors name the file and the
    problem, never a value from it."""
    path = s.fcm_credentials_file
    if path is None:
        raise ConfigError(f"FOLLOWUPS_PUSH={s.push} needs FOLLOWUPS_FCM_CREDENTIALS_FILE")
    where = f"FOLLOWUPS_FCM_CREDENTIALS_FILE {str(path)!r}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        info = json.loads(raw)
    except ValueError:
        raise ConfigError(
            f"{where} is not JSON (expected a service account key file from the Google "
            "Cloud console)"
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigError(
            f'{where} is not a service account key file ("type" is not "service_account")'
        )
    missing = [k for k in SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(k), str) or not info[k]]
    if missing:
        raise ConfigError(f"{where} has no {', '.join(missing)}")
    if not str(info["token_uri"]).startswith("https://"):
        raise ConfigError(f"{where}: token_uri must be an https URL")
    project = s.fcm_project_id or info.get("project_id")
    if not isinstance(project, str) or not project:
        raise ConfigError(f"FOLLOWUPS_FCM_PROJECT_ID is not set and {where} has no project_id")
    if not FCM_PROJECT_ID.fullmatch(project):
        raise ConfigError(f"{where}: project_id is not a Google Cloud project id")
    if s.fcm_ca_file is not None and not s.fcm_ca_file.is_file():
        raise ConfigError(f"FOLLOWUPS_FCM_CA_FILE {str(s.fcm_ca_file)!r} is not a readable file")
    if load_key:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(str(info["private_key"]).encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: private_key is not a PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{where}: private_key is not an RSA key")
    return info, project
