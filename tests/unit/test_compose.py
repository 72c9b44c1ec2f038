"""docker-compose.yml is the stack the README describes, with the settings' own defaults.

Read with PyYAML and the compose check of scripts/deploy_lint.py (what `make deploy-lint` runs);
no Docker. Where the compose file relies on the images (stage names, the probe, the volume
paths), it is checked against deployment/docker/Dockerfile and boot.sh.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import defaultdict

import pytest
from pydantic import TypeAdapter

from dc.config import REPO_ROOT, Settings
from tests.conftest import REPO
from tests.script_support import load_script

lint = load_script("deploy_lint")

DOCKERFILE = REPO / "deployment" / "docker" / "Dockerfile"
BOOT_SCRIPT = REPO / "deployment" / "docker" / "boot.sh"


COMPOSE = lint.load_compose()
SERVICES = COMPOSE["services"]

LONG_RUNNING = {"postgres", "s3", "embedder", "api"}
ONE_SHOT = {"migrate", "demo"}
# Each service's dependencies and the condition it waits for (none beyond these).
DEPENDENCIES = {
    "postgres": {},
    "s3": {},
    "embedder": {},
    "migrate": {"postgres": "service_healthy"},
    "demo": {"migrate": "service_completed_successfully", "s3": "service_healthy"},
    "api": {
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
        "demo": "service_completed_successfully",
        "embedder": "service_healthy",
    },
}
# image -> the Dockerfile target it is built from
IMAGES = {"dc-api": "api", "dc-embedder": "embedder", "dc-trainer": "trainer"}
# Where the stack's default must differ from `Settings`'s, and why.
STACK_DEFAULTS = {
    "DC_DATABASE_URL": "the stack's PostgreSQL instead of the SQLite file",
    "DC_EMBEDDER_URL": "the embedder service by its name on the compose network",
    "DC_S3_BUCKET": "backups on, into the S3 stand-in's bucket",
    "DC_S3_ENDPOINT_URL": "the S3 stand-in",
}
# DC_* variables of the compose file that are no setting.
COMPOSE_VARIABLES = {"DC_IMAGE_TAG"}
# What an operator of each service sets most (README's settings table): passed through.
OPERATOR_SETTINGS = {
    "api": {
        "DC_DATABASE_URL",
        "DC_EMBEDDER_URL",
        "DC_S3_BUCKET",
        "DC_S3_ENDPOINT_URL",
        "DC_AWS_REGION",
        "DC_ADMIN_TOKEN",
        "DC_API_WORKERS",
        "DC_API_THREADS",
        "DC_API_GRACEFUL_TIMEOUT_S",
        "DC_MAX_QUEUE_WAIT_MS",
        "DC_SERVING_REGION",
        "DC_LOG_LEVEL",
    },
    "embedder": {
        "DC_EMBEDDER_WORKERS",
        "DC_EMBEDDER_THREADS",
        "DC_ENCODER_WORKERS",
        "DC_CACHE_SIZE",
        "DC_MAX_BATCH_SIZE",
        "DC_MAX_QUEUE_WAIT_MS",
        "DC_LOG_LEVEL",
    },
    "demo": {"DC_DATABASE_URL", "DC_S3_BUCKET", "DC_S3_ENDPOINT_URL", "DC_LOG_LEVEL"},
    "migrate": {"DC_DATABASE_URL", "DC_LOG_LEVEL"},
}


def setting_fields() -> dict[str, object]:
    """`DC_<NAME>` -> the Settings field, for every field."""
    return {f"DC_{name.upper()}": field for name, field in Settings.model_fields.items()}


def compose_defaults() -> dict[str, set[str]]:
    """Every DC_* variable the compose file interpolates -> the defaults it is given."""
    defaults = defaultdict(set)
    for _, name, op, arg in lint.references(COMPOSE):
        if name.startswith("DC_"):
            defaults[name].add(arg if op in (":-", "-") else f"<no default: ${{{name}}}>")
    return defaults


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's named stages -> their instructions (keyword, arguments), in order."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            current = []
            named = re.search(r"\s+AS\s+(\S+)\s*$", arguments, re.IGNORECASE)
            if named:
                stages[named.group(1)] = current
        current.append((keyword.upper(), arguments.strip()))
    return stages


def stage_env(stage: str) -> dict[str, str]:
    """The ENV a stage sets, with what it inherits from the stages it is built FROM."""
    stages = dockerfile_stages()
    env: dict[str, str] = {}
    for keyword, arguments in stages[stage]:
        if keyword == "FROM" and arguments.split()[0] in stages:
            env.update(stage_env(arguments.split()[0]))
        elif keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def stage_healthcheck(stage: str) -> list[str]:
    """The exec form of a stage's HEALTHCHECK CMD."""
    for keyword, arguments in dockerfile_stages()[stage]:
        if keyword == "HEALTHCHECK":
            return json.loads(arguments.split(" CMD ", 1)[1])
    raise AssertionError(f"stage {stage} has no HEALTHCHECK")


def seconds(duration: str) -> float:
    """A compose duration (`45s`, `1m30s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(float(number) * units[unit] for number, unit in parts)


def environment(service: str) -> dict[str, str]:
    return SERVICES[service].get("environment") or {}


def mounts(service: str) -> dict[str, str]:
    """target -> source of a service's volumes (short syntax)."""
    return {
        target: source
        for source, target, *_ in (m.split(":") for m in SERVICES[service].get("volumes") or ())
    }


# --- the checker itself -----------------------------------------------------------------------


def test_the_compose_file_is_valid_against_the_compose_spec():
    assert lint.compose_problems() == []


def test_the_compose_check_finds_what_docker_compose_would_refuse(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n"
        "  web:\n"
        "    image: x\n"
        "    healthcheck: {test: [CMD, 'true'], interval: 5}\n"
        "    restart_policy: always\n",
        encoding="utf-8",
    )
    problems = lint.compose_problems(broken)
    assert problems == [
        "services.web: 'restart_policy' does not match any of the regexes: '^x-'",
        "services.web.healthcheck.interval: 5 is not of type 'string'",
    ]
    broken.write_text(
        "services:\n  api:\n    image: x\n    depends_on: [nowhere]\n"
        "    volumes: ['undeclared:/data', './here:/bound']\n",
        encoding="utf-8",
    )
    assert lint.compose_problems(broken) == [
        "services.api.depends_on: no service 'nowhere'",
        "services.api.volumes: named volume 'undeclared' is not declared under the top-level "
        "volumes:",
    ]
    broken.write_text("services:\n  api:\n    image: ${DC_IMAGE_TAG:?set it}\n", encoding="utf-8")
    assert lint.compose_problems(broken) == ["docker-compose.yml: DC_IMAGE_TAG is required: set it"]


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A-x}", {}, "x"),
        ("${A:-x}", {"A": "set"}, "set"),
        ("${A:+alt}", {"A": "set"}, "alt"),
        ("${A:+alt}", {"A": ""}, ""),
        ("${A+alt}", {"A": ""}, "alt"),
        ("$A/${B}", {"A": "a", "B": "b"}, "a/b"),
        ("$${A}", {"A": "a"}, "${A}"),
        (
            "postgresql+psycopg2://dc:dc@postgres:5432/dc",
            {},
            "postgresql+psycopg2://dc:dc@postgres:5432/dc",
        ),
    ],
)
def test_interpolation_follows_the_compose_spec(text, environ, expected):
    assert lint.interpolate(text, environ) == expected


@pytest.mark.parametrize("text", ["${A:?needed}", "${A?needed}", "${A:-${B}}", "${1A}"])
def test_interpolation_refuses_what_it_cannot_read_or_compose_would_refuse(text):
    with pytest.raises(lint.InterpolationError):
        lint.interpolate(text, {})


# --- the services -----------------------------------------------------------------------------


def test_the_stack_has_its_six_services():
    assert set(SERVICES) == LONG_RUNNING | ONE_SHOT


def test_long_running_services_have_healthchecks_and_restart():
    for name in LONG_RUNNING:
        check = SERVICES[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert SERVICES[name].get("restart") == "unless-stopped", name


def test_one_shot_jobs_run_once_with_their_boot_role():
    roles = set(re.findall(r"^\s+([a-z]+)\)$", BOOT_SCRIPT.read_text(encoding="utf-8"), re.M))
    for name in ONE_SHOT:
        service = SERVICES[name]
        assert service.get("restart") == "no", name
        assert "healthcheck" not in service, name
        assert service["command"] == [name], name
        assert name in roles, f"boot.sh has no role {name!r}"


def test_each_service_waits_for_what_it_needs():
    for name, expected in DEPENDENCIES.items():
        found = {
            dependency: spec["condition"]
            for dependency, spec in (SERVICES[name].get("depends_on") or {}).items()
        }
        assert found == expected, name


def test_the_api_spool_is_a_named_volume_at_the_images_spool_dir():
    spool_dir = stage_env("api")["DC_SPOOL_DIR"]
    source = mounts("api").get(spool_dir)
    assert source, f"api mounts nothing at the image's DC_SPOOL_DIR {spool_dir}"
    assert source in COMPOSE["volumes"], f"{source} is not a named volume"
    assert source not in mounts("demo").values(), "the spool is the api's own"


def test_the_demo_job_writes_the_artifacts_where_the_api_reads_them():
    artifacts_dir = stage_env("api")["DC_ARTIFACTS_DIR"]
    assert stage_env("trainer")["DC_ARTIFACTS_DIR"] == artifacts_dir
    volume = mounts("api").get(artifacts_dir)
    assert volume in COMPOSE["volumes"], f"api mounts no named volume at {artifacts_dir}"
    assert mounts("demo").get(artifacts_dir) == volume, "demo writes elsewhere"
    # ... and the S3 backup the API restores a missing version from (dc/serve/version_files.py)
    for variable in ("DC_S3_BUCKET", "DC_S3_PREFIX", "DC_S3_ENDPOINT_URL", "DC_AWS_REGION"):
        assert environment("demo")[variable] == environment("api")[variable], variable
    assert environment("demo")["DC_S3_BUCKET"], "the demo job backs nothing up"


def test_no_service_mounts_a_host_path():
    for name in SERVICES:
        for target, source in mounts(name).items():
            assert source in COMPOSE["volumes"], f"{name} mounts {source} at {target}"


def test_the_web_services_publish_their_ports_on_loopback():
    defaults = Settings.model_fields
    for name, port in (
        ("api", defaults["api_port"].default),
        ("embedder", defaults["embedder_port"].default),
    ):
        assert SERVICES[name]["ports"] == [f"127.0.0.1:{port}:{port}"], name
        assert f"EXPOSE {port}" in {f"{k} {a}" for k, a in dockerfile_stages()[name]}, name


def test_the_api_stops_later_than_its_workers_flush():
    graceful_s = float(lint.interpolate(environment("api")["DC_API_GRACEFUL_TIMEOUT_S"], {}))
    assert seconds(SERVICES["api"]["stop_grace_period"]) >= graceful_s + 10
    assert seconds(SERVICES["embedder"]["stop_grace_period"]) > 30  # embedder/gunicorn.conf.py


def test_the_web_services_are_probed_as_their_images_probe_them():
    assert SERVICES["api"]["healthcheck"]["test"] == ["CMD", *stage_healthcheck("api")]
    # the embedder's answers once its model is loaded: what the API waits for
    assert SERVICES["embedder"]["healthcheck"]["test"] == [
        "CMD",
        *stage_healthcheck("embedder"),
        "/ready",
    ]


# --- the images -------------------------------------------------------------------------------


def test_each_image_is_built_once_from_its_dockerfile_target():
    built = defaultdict(list)
    for name, service in SERVICES.items():
        if "build" in service:
            image, _, tag = service["image"].partition(":")
            assert tag == "${DC_IMAGE_TAG:-latest}", name
            build = service["build"]
            assert (build["context"], build["dockerfile"]) == (".", "deployment/docker/Dockerfile")
            assert build["target"] == IMAGES.get(image), f"{name} builds {image} from {build}"
            built[image].append(name)
    assert {image: len(names) for image, names in built.items()} == dict.fromkeys(IMAGES, 1)
    for name, service in SERVICES.items():
        image = service["image"].partition(":")[0]
        if image.startswith("dc-"):
            assert image in built, f"{name} runs {image}, which no service builds"


def test_the_build_targets_are_stages_of_the_dockerfile():
    stages = dockerfile_stages()
    for name, service in SERVICES.items():
        if "build" in service:
            assert service["build"]["target"] in stages, name


def test_the_api_runs_without_tensorflow_against_the_embedder_service():
    assert stage_env("api")["DC_EMBEDDER_MODE"] == "remote"
    assert lint.interpolate(environment("api")["DC_EMBEDDER_URL"], {}) == (
        f"http://embedder:{Settings.model_fields['embedder_port'].default}"
    )


# --- the settings -----------------------------------------------------------------------------


def test_every_dc_variable_is_a_setting_with_a_default():
    fields = setting_fields()
    for name, defaults in compose_defaults().items():
        assert name in fields or name in COMPOSE_VARIABLES, f"{name} is no setting (a typo?)"
        assert len(defaults) == 1, f"{name} has several defaults: {sorted(defaults)}"
        assert not next(iter(defaults)).startswith("<no default"), f"{name} has no default"


def test_compose_defaults_are_the_settings_defaults():
    """The drift check: a default changed in dc/config.py must change here too."""
    fields = setting_fields()
    differing = {}
    for name, (default,) in compose_defaults().items():
        if name in COMPOSE_VARIABLES:
            continue
        field = fields[name]
        assert not str(field.default).startswith(str(REPO_ROOT)), (
            f"{name} is a path the images set (volumes mount there): do not pass it"
        )
        if TypeAdapter(field.annotation).validate_python(default) != field.default:
            differing[name] = default
    assert set(differing) == set(STACK_DEFAULTS), (
        f"compose defaults that differ from dc.config.Settings: {differing}; "
        f"expected to differ only: {sorted(STACK_DEFAULTS)}"
    )


def test_the_settings_an_operator_sets_are_passed_through():
    for service, expected in OPERATOR_SETTINGS.items():
        missing = expected - set(environment(service))
        assert not missing, f"{service} does not pass {sorted(missing)}"


# --- the README -------------------------------------------------------------------------------


def test_the_readme_lists_every_service_with_its_ports_and_volumes():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Deploy\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert match, "README.md has no '## Deploy' section"
    rows = {
        row.split("|")[1].strip().strip("`"): row
        for row in match.group(1).splitlines()
        if row.startswith("| `")
    }
    for name, service in SERVICES.items():
        row = rows.get(name)
        assert row, f"the Deploy section's table has no row for the service {name}"
        for port in service.get("ports") or ():
            assert port.rpartition(":")[0] in row, f"{name}: port {port} is not in {row}"
        for source in mounts(name).values():
            assert f"`{source}`" in row, f"{name}: volume {source} is not in {row}"
