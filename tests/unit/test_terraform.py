"""deployment/terraform/ read with python-hcl2 and held against the code it deploys.

`terraform test` (make deploy-lint) checks what the plan does; these check what Terraform cannot
know: that every DC_* name is a real setting, that ports, paths and health checks are the apps'
own, and that the README's variable table and checkov skips are current.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import hcl2
import pytest
from flask import Flask

from api.router import operations
from dc.config import Settings
from tests.script_support import load_script

lint = load_script("deploy_lint")

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "deployment" / "terraform"
DOCKERFILE = REPO / "deployment" / "docker" / "Dockerfile"
SETTING_NAMES = {f"DC_{name.upper()}" for name in Settings.model_fields}
SECRETS = {"DC_DATABASE_PASSWORD", "DC_ADMIN_TOKEN", "DC_FEEDBACK_TOKEN"}
DC_NAME = re.compile(r"\bDC_[A-Z0-9_]*[A-Z0-9]\b")


@functools.cache
def parsed(name: str) -> dict:
    with (TERRAFORM / name).open(encoding="utf-8") as handle:
        return hcl2.load(handle)


@functools.cache
def all_locals() -> dict[str, object]:
    """Every `locals` entry of every .tf file (names are unique across a module)."""
    entries: dict[str, object] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for block in parsed(path.name).get("locals", []):
            entries.update(block)
    return entries


def local_text(name: str) -> str:
    return lint.hcl_text(all_locals()[name])


def resource(kind: str, name: str) -> dict:
    for path in sorted(TERRAFORM.glob("*.tf")):
        for block in parsed(path.name).get("resource", []):
            body = block.get(f'"{kind}"', {})
            if f'"{name}"' in body:
                return body[f'"{name}"']
    raise AssertionError(f"no resource {kind}.{name}")


def dockerfile_stage(target: str) -> str:
    """The text of one final stage of the Dockerfile (FROM ... AS target up to the next FROM)."""
    pattern = rf"^FROM \S+ AS {target}\n(.*?)(?=^FROM |\Z)"
    match = re.search(pattern, DOCKERFILE.read_text(), re.M | re.S)
    assert match, f"no stage {target}"
    return match[1]


# --- variables ---------------------------------------------------------------------------------


def test_every_variable_has_a_description_and_a_type():
    variables = lint.terraform_variables()
    assert len(variables) > 40
    for name, body in variables.items():
        assert lint.hcl_text(body.get("description", "")).strip(), f"{name}: no description"
        assert body.get("type"), f"{name}: no type"


def test_the_variable_table_in_the_readme_is_current():
    readme = (TERRAFORM / "README.md").read_text(encoding="utf-8")
    assert lint.variables_markdown() in readme, (
        "deployment/terraform/README.md: paste `python scripts/deploy_lint.py --variables-table`"
    )


def test_every_environment_file_sets_declared_variables_only():
    declared = set(lint.terraform_variables())
    files = sorted((TERRAFORM / "environments").glob("*.tfvars"))
    assert {path.stem for path in files} >= {"dev", "prod"}
    for path in files:
        with path.open(encoding="utf-8") as handle:
            values = hcl2.load(handle)
        names = {name for name in values if not name.startswith("__")}  # python-hcl2's own keys
        assert names <= declared, f"{path.name}: {names - declared}"


# --- settings ----------------------------------------------------------------------------------


def test_every_dc_name_in_the_terraform_is_a_setting():
    # Descriptions, locals, the task definitions, the environment files: any DC_* anywhere.
    paths = [*TERRAFORM.glob("*.tf"), *TERRAFORM.glob("environments/*.tfvars")]
    found = {name for path in paths for name in DC_NAME.findall(path.read_text(encoding="utf-8"))}
    assert {"DC_DATABASE_URL", "DC_EMBEDDER_URL", "DC_S3_BUCKET", "DC_API_PORT"} <= found
    assert found <= SETTING_NAMES, f"not settings: {sorted(found - SETTING_NAMES)}"


@pytest.mark.parametrize(
    "name", ["defaults", "wiring", "database_wiring", "s3_wiring", "api_wiring", "embedder_wiring"]
)
def test_no_secret_is_among_the_plain_settings(name):
    assert not (set(DC_NAME.findall(local_text(name))) & SECRETS)


def test_the_secrets_come_from_secrets_manager():
    assert set(DC_NAME.findall(local_text("database_secrets"))) == {"DC_DATABASE_PASSWORD"}
    assert "master_user_secret" in local_text("database_secrets")
    assert "DC_DATABASE_PASSWORD" not in local_text("api_secrets")
    assert set(DC_NAME.findall(local_text("tokens"))) == {"DC_ADMIN_TOKEN", "DC_FEEDBACK_TOKEN"}
    # The task definitions take environment and secrets from those maps only.
    for container in ("api_container", "embedder_container"):
        text = local_text(container)
        assert re.search(r"environment\s*=\s*\[for k in sort\(keys\(local\.\w+_settings\)\)", text)


def test_the_database_url_carries_no_password():
    url = local_text("database_url")
    assert url.startswith("postgresql+psycopg2://${var.db_username}@"), url


# --- ports, paths and health checks ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "port_setting"), [("api", "api_port"), ("embedder", "embedder_port")]
)
def test_container_ports_are_the_services_own(service, port_setting):
    port = all_locals()[f"{service}_port"]
    assert port == Settings.model_fields[port_setting].default
    stage = dockerfile_stage(service)
    assert f"EXPOSE {port}" in stage
    assert f"DC_{port_setting.upper()}={port}" in stage


def test_the_health_check_paths_are_routes_of_both_apps():
    app = Flask(__name__)
    app.register_blueprint(operations)
    api_routes = {rule.rule for rule in app.url_map.iter_rules()}
    embedder_source = (REPO / "embedder" / "app.py").read_text(encoding="utf-8")
    for name in ("ready_path", "health_path"):
        path = lint.hcl_text(all_locals()[name])
        assert path in api_routes, f"the API has no route {path}"
        assert f'@app.get("{path}")' in embedder_source, f"the embedder has no route {path}"


def test_the_load_balancer_checks_readiness_and_the_tasks_check_what_they_should():
    health_check = resource("aws_lb_target_group", "api")["health_check"][0]
    assert lint.hcl_text(health_check["path"]) == "local.ready_path"
    assert "/app/deployment/docker/healthcheck.py" in local_text("api_container")
    assert (REPO / "deployment" / "docker" / "healthcheck.py").is_file()
    assert re.search(r'"api", local\.health_path\]', local_text("api_container"))
    assert re.search(r'"embedder", local\.ready_path\]', local_text("embedder_container"))


def test_volumes_are_where_the_images_write():
    runtime = dockerfile_stage("runtime")
    assert f"DC_SPOOL_DIR={lint.hcl_text(all_locals()['spool_path'])}" in runtime
    assert f"DC_ARTIFACTS_DIR={lint.hcl_text(all_locals()['artifact_path'])}" in runtime
    # The image's user, which the EFS access point and the task definitions name.
    assert "--uid 10001 --gid dc" in runtime
    assert '"10001:10001"' in str(all_locals()["container_base"])


def test_the_batch_job_finds_what_the_batch_archive_holds():
    # emr.tf tells the job where things are inside ./environment (Spark's --archives ...
    # #environment); the Dockerfile's batch-venv stage puts them there and in /dist.
    stage = dockerfile_stage("batch-venv")
    assert "FROM amazonlinux:2023." in DOCKERFILE.read_text()  # EMR 7's OS, not Debian
    assert "--python-prefix /home/hadoop/environment" in stage
    python = lint.hcl_text(all_locals()["batch_python"])
    assert python == "./environment/bin/python"
    handle = re.search(r'DC_EMBEDDER_HANDLE = "([^"]+)"', local_text("batch_settings"))[1]
    assert handle.startswith("./environment/")
    assert f"/home/hadoop/environment/{handle.removeprefix('./environment/')}" in stage
    for name in ("pyspark_venv.tar.gz", "postgresql-jdbc.jar"):
        assert f"/dist/{name}" in stage
        assert any(value.endswith(f'/{name}"') for value in all_locals()["batch_s3"].values())
    assert "!= 'pyspark'" in stage  # EMR's Spark brings pyspark; the archive must not


def test_the_stop_timeout_covers_the_api_graceful_timeout():
    variables = lint.terraform_variables()
    graceful = variables["api_graceful_timeout_s"]["default"]
    assert graceful == Settings.model_fields["api_graceful_timeout_s"].default
    assert variables["stop_timeout_s"]["default"] >= graceful + 5


# --- checkov skips -------------------------------------------------------------------------------


def test_every_checkov_skip_has_a_reason_and_is_listed_in_the_readme():
    readme = (TERRAFORM / "README.md").read_text(encoding="utf-8")
    skips = []
    for path in sorted((REPO / "deployment").rglob("*")):
        if path.is_file() and ".terraform" not in path.parts and path.suffix in {".tf", ""}:
            text = path.read_text(errors="replace")
            for match in re.finditer(r"checkov:skip=(CKV\w+):(.*)", text):
                skips.append(match[1])
                assert len(match[2].strip()) > 20, f"{path.name}: {match[1]} needs a reason"
    assert len(skips) >= 10
    missing = sorted({check for check in skips if check not in readme})
    assert not missing, f"deployment/terraform/README.md does not list {missing}"
