"""The deploy recipes in deploy/: Kubernetes manifests against the API schemas and the keys
that keep runs apart and secrets safe, systemd units through `systemd-analyze verify`,
the container image's Dockerfile, and all of them against the commands and paths the
README and crontab.example document."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
README = (ROOT / "README.md").read_text()
VENV = "/opt/followups/.venv"  # README, Production setup
ENV_FILE = "/etc/followups.env"
OLDEST_KUBERNETES = "1.27"  # CronJob timeZone is GA from here on
SECRET_SETTINGS = {
    "FOLLOWUPS_DATABASE_URL",
    "FOLLOWUPS_ALERT_WEBHOOK_URL",
    "FOLLOWUPS_HEARTBEAT_URL",
}


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def resource(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_spec(cronjob: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def crontab_commands() -> dict[str, list[str]]:
    """The followups command of each crontab.example line, by subcommand."""
    commands = {}
    for line in (ROOT / "crontab.example").read_text().splitlines():
        match = re.search(r"flock -n \S+ (followups [^>]+?)\s*>>", line)
        if match:
            words = match.group(1).split()
            subcommand = next(w for w in words[1:] if not w.startswith("-"))
            commands[subcommand] = words
    return commands


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, quantity
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


def measured_peak_mb() -> float:
    """Peak RSS of the one-process backlog run, from docs/performance.md's results table."""
    lines = (ROOT / "docs" / "performance.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| scenario |"))
    column = [c.strip() for c in header.split("|")].index("peak RSS")
    row = next(line for line in lines if line.startswith("| **backlog**"))
    match = re.search(r"(\d+) MB", row.split("|")[column])
    assert match, row
    return float(match.group(1))


# -- Kubernetes -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_kubernetes_manifests_match_the_api_schema(version: str) -> None:
    """Every manifest validates strictly (no unknown or misspelt field)."""
    docs = manifests()
    assert {d["kind"] for d in docs} == {"ConfigMap", "CronJob", "Job"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_send_due_cronjob_runs_every_minute_never_twice_at_once() -> None:
    """Forbid is the flock guard; a late start is skipped; no retry within the minute."""
    cronjob = resource("CronJob", "followups-send-due")
    spec = cronjob["spec"]
    assert spec["schedule"] == "* * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < 60
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0
    pod = pod_spec(cronjob)
    assert pod["restartPolicy"] == "Never"
    assert pod["hostname"]  # one Pushgateway group, not one per pod
    (container,) = pod["containers"]
    assert ["followups", *container["args"]] == crontab_commands()["send-due"]


def test_cleanup_cronjob_runs_the_crontab_command_daily() -> None:
    """Same command as crontab.example, once a day, never overlapping."""
    spec = resource("CronJob", "followups-cleanup")["spec"]
    assert re.fullmatch(r"\d+ \d+ \* \* \*", spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    (container,) = pod_spec(resource("CronJob", "followups-cleanup"))["containers"]
    assert ["followups", *container["args"]] == crontab_commands()["cleanup"]


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("CronJob", "followups-send-due"),
        ("CronJob", "followups-cleanup"),
        ("Job", "followups-db-upgrade"),
    ],
)
def test_pods_run_as_the_images_non_root_user_and_cannot_escalate(kind: str, name: str) -> None:
    """runAsNonRoot with the Dockerfile's uid, read-only root, no capabilities, no token."""
    found = resource(kind, name)
    pod = pod_spec(found) if kind == "CronJob" else found["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+)", dockerfile(), re.M)
    assert user
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user.group(1)) > 0
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "env" not in container  # settings only from the ConfigMap and the Secret


def test_secrets_come_from_secrets_and_the_apns_key_is_a_read_only_file() -> None:
    """The key: a Secret volume mounted read-only where FOLLOWUPS_APNS_KEY_FILE points,
    group-readable only. Passwords and secret URLs: the Secret, never the ConfigMap."""
    config = resource("ConfigMap", "followups-config")["data"]
    pod = pod_spec(resource("CronJob", "followups-send-due"))
    (container,) = pod["containers"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": "followups-config"}},
        {"secretRef": {"name": "followups-env"}},
    ]
    key_mount, secret = key_file_mount(pod, "followups-apns-key")
    assert key_mount["readOnly"] is True
    assert secret["defaultMode"] & 0o007 == 0  # nothing for "other"
    assert config["FOLLOWUPS_APNS_KEY_FILE"].startswith(key_mount["mountPath"] + "/")
    assert not SECRET_SETTINGS & set(config)
    for variable in config:  # each one is a documented setting
        assert f"| `{variable}` |" in README, variable


def key_file_mount(pod: dict[str, Any], secret_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The send-due container's mount of a Secret volume, and that volume's secret."""
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    ((mount, secret),) = [
        (m, volumes[m["name"]]["secret"])
        for m in container["volumeMounts"]
        if volumes[m["name"]].get("secret", {}).get("secretName") == secret_name
    ]
    return mount, secret


def test_the_fcm_key_is_a_read_only_file_from_its_own_secret() -> None:
    """Like the APNs key: a Secret volume mounted read-only, group-readable only, where
    FOLLOWUPS_FCM_CREDENTIALS_FILE points; optional, as FCM is. No other pod has it."""
    config = resource("ConfigMap", "followups-config")["data"]
    mount, secret = key_file_mount(
        pod_spec(resource("CronJob", "followups-send-due")), "followups-fcm-key"
    )
    apns_mount, _ = key_file_mount(
        pod_spec(resource("CronJob", "followups-send-due")), "followups-apns-key"
    )
    assert mount["readOnly"] is True
    assert secret["defaultMode"] & 0o007 == 0
    assert secret["optional"] is True
    assert config["FOLLOWUPS_FCM_CREDENTIALS_FILE"].startswith(mount["mountPath"] + "/")
    assert mount["mountPath"] != apns_mount["mountPath"]
    for kind, name in (("CronJob", "followups-cleanup"), ("Job", "followups-db-upgrade")):
        found = resource(kind, name)
        spec = pod_spec(found) if kind == "CronJob" else found["spec"]["template"]["spec"]
        assert all("secret" not in v for v in spec.get("volumes", [])), name


def test_systemd_send_due_documents_both_key_files_read_only() -> None:
    """The unit names both key variables and keeps their directory read-only; the docs
    page gives the same paths."""
    text = (DEPLOY / "systemd" / "followups-send-due.service").read_text()
    section = unit("followups-send-due.service")["Service"]
    key_dir = section["ReadOnlyPaths"].lstrip("-")
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    for variable in ("FOLLOWUPS_APNS_KEY_FILE", "FOLLOWUPS_FCM_CREDENTIALS_FILE"):
        (path,) = re.findall(rf"{variable}=(\S+?),? ", text)
        assert path.startswith(key_dir + "/"), path
        assert f"{variable}={path}" in deploy_doc, variable


def test_resources_are_sized_from_the_measured_peak() -> None:
    """Memory request at least the backlog run's peak RSS (docs/performance.md); limit above."""
    peak = measured_peak_mb()
    for name in ("followups-send-due", "followups-cleanup"):
        (container,) = pod_spec(resource("CronJob", name))["containers"]
        resources = container["resources"]
        request = mebibytes(resources["requests"]["memory"])
        assert request * 1.048576 >= peak  # MiB to MB
        assert mebibytes(resources["limits"]["memory"]) >= 2 * request
        assert resources["requests"]["cpu"] and resources["limits"]["cpu"]


# -- systemd ----------------------------------------------------------------------------


def test_systemd_units_run_the_documented_commands_with_the_env_file() -> None:
    """ExecStart is the README's install path plus the crontab's command; same env file."""
    assert f"python3.11 -m venv {VENV}" in README and ENV_FILE in README
    crontab = crontab_commands()
    for service, subcommand in (
        ("followups-send-due.service", "send-due"),
        ("followups-cleanup.service", "cleanup"),
    ):
        section = unit(service)["Service"]
        executable, *args = section["ExecStart"].split()
        assert executable == f"{VENV}/bin/followups"
        assert ["followups", *args] == crontab[subcommand]
        assert section["EnvironmentFile"] == ENV_FILE
        assert section["Type"] == "oneshot"  # what keeps the timer from overlapping runs
        assert section["User"] == "followups"
    assert unit("followups-send-due.timer")["Timer"]["OnCalendar"] == "*-*-* *:*:00"
    assert unit("followups-cleanup.timer")["Timer"]["OnCalendar"].startswith("*-*-* ")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify in a scratch root holding the units, the real entry point at the README's
    path and the system's own units: no error and no warning."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    names = sorted(p.name for p in (DEPLOY / "systemd").iterdir())
    assert names == [
        "followups-cleanup.service",
        "followups-cleanup.timer",
        "followups-send-due.service",
        "followups-send-due.timer",
    ]
    for name in names:
        shutil.copy(DEPLOY / "systemd" / name, units / name)
    entry_point = root / VENV.lstrip("/") / "bin" / "followups"
    entry_point.parent.mkdir(parents=True)
    shutil.copy2(Path(sys.executable).parent / "followups", entry_point)
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            f"--root={root}",
            *(f"/etc/systemd/system/{name}" for name in names),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


# -- container image --------------------------------------------------------------------


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_is_slim_non_root_from_the_lock_with_followups_as_entrypoint() -> None:
    """Final stage: slim base, hash-checked lock install, project without deps, non-root."""
    final = dockerfile().split("\nFROM ")[-1]
    assert re.match(r"python:\$\{PYTHON_VERSION\}-slim\n", final)
    assert "pip install --require-hashes -r /tmp/requirements-pip.lock" in final
    assert "pip install --require-hashes -r /tmp/requirements.lock" in final
    assert final.index("requirements-pip.lock") < final.index("-r /tmp/requirements.lock")
    assert "pip install --no-deps" in final
    assert re.search(r"^USER \d+:\d+$", final, re.M)
    assert '\nENTRYPOINT ["followups"]\n' in final
    assert 'CMD ["send-due"]' in final


def test_docker_build_context_holds_what_the_dockerfile_copies() -> None:
    """Each COPY source from the context is let through the Dockerfile's .dockerignore."""
    allowed = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = set()
    for line in dockerfile().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied |= {Path(source).as_posix() for source in line.split()[1:-1]}
    assert (
        copied
        == allowed
        == {
            "pyproject.toml",
            "README.md",
            "followup_cli",
            "requirements.lock",
            "requirements-pip.lock",
        }
    )
    for name in copied:
        assert (ROOT / name).exists()
