"""pyproject.toml and the conda files in env/ name the same dependencies, with the same ranges.

The container images install pyproject's groups (api: the core + `reports`; embedder: +
`encoder`; trainer: + `encoder` + `train` + `reports`) and conda users get them from env/*.yml,
so a package added to one and not the other gives an environment unlike the one the tests ran
in. Names are compared after PEP 503
normalisation (lower case, runs of `-`, `_`, `.` equal), so conda-forge's `prometheus_client` is
pyproject's `prometheus-client`; where conda-forge's package is another distribution
(`psycopg2` for `psycopg2-binary`), the conda file takes pyproject's from pip instead.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import pytest
import yaml  # PyYAML: the dev extra brings it (schemathesis requires it)

from tests.conftest import REPO

CORE = "core"  # pyproject's [project] dependencies
# The pyproject groups each conda file mirrors: base.yml is the API image's environment (the core
# and the reports it serves).
MIRRORS = {
    "base.yml": (CORE, "reports"),
    "cpu.yml": ("encoder",),
    "gpu.yml": ("encoder",),
    "build.yml": ("train", "batch"),
}
# Extras that only pip installs (developers: `pip install -e '.[dev,bench,notebooks]'`, see
# env/base.yml).
PIP_ONLY_GROUPS = frozenset({"dev", "bench", "notebooks"})
# What every conda file lists without it being a dependency of the project.
CONDA_ONLY = frozenset({"python", "pip"})
# The API image installs the core alone and must not get TensorFlow (about 2.3 GB) with it.
TENSORFLOW_STACK = frozenset(
    {"tensorflow", "tensorflow-cpu", "tensorflow-hub", "tensorflow-text", "tf-keras", "keras"}
)
# The project itself, from the repository root: conda runs pip in the file's folder, env/.
INSTALL_PROJECT = "-e .."

# name, optional [extras], the rest (the version range): `tensorflow[and-cuda]>=2.16,<2.22`.
_SPEC = re.compile(r"^(?:[\w.-]+::)?([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


@dataclass(frozen=True)
class Requirement:
    """One dependency as a file writes it: normalised name and its version range."""

    name: str
    range: frozenset[str]  # comma-separated clauses without spaces; empty when unbounded


def parse(spec: str) -> Requirement:
    """Split a pip or conda requirement into normalised name and range clauses."""
    match = _SPEC.match(spec.strip())
    assert match, f"cannot read the requirement {spec!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    clauses = (c.replace(" ", "") for c in match.group(2).split(",")) if match.group(2) else ()
    return Requirement(name, frozenset(c for c in clauses if c))


def pyproject_groups() -> dict[str, list[Requirement]]:
    """Every group of pyproject.toml: the core dependencies and each optional extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {CORE: project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: [parse(spec) for spec in specs] for group, specs in groups.items()}


def conda_file(name: str) -> tuple[list[Requirement], list[str]]:
    """The packages of env/<name> (conda's and pip's together) and its pip options (`-e ..`)."""
    environment = yaml.safe_load((REPO / "env" / name).read_text(encoding="utf-8"))
    packages: list[Requirement] = []
    options: list[str] = []
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            for spec in entry["pip"]:
                if spec.startswith("-"):
                    options.append(spec)
                else:
                    packages.append(parse(spec))
        else:
            packages.append(parse(entry))
    return packages, options


def names(requirements: list[Requirement]) -> set[str]:
    return {requirement.name for requirement in requirements}


def test_every_group_has_its_conda_file_and_every_conda_file_a_group():
    groups = set(pyproject_groups())
    mirrored = {group for mirrored in MIRRORS.values() for group in mirrored}
    assert groups == mirrored | PIP_ONLY_GROUPS, (
        "a pyproject group without a conda file (or a conda file for a group that is gone): "
        "add the file and its line to MIRRORS, or the group to PIP_ONLY_GROUPS"
    )
    assert {path.name for path in (REPO / "env").glob("*.yml")} == set(MIRRORS)


def mirrored(file: str) -> list[Requirement]:
    """The requirements of the pyproject groups that env/<file> mirrors."""
    groups = pyproject_groups()
    return [requirement for group in MIRRORS[file] for requirement in groups[group]]


@pytest.mark.parametrize("file", sorted(MIRRORS))
def test_conda_file_lists_every_dependency_of_its_group(file):
    missing = names(mirrored(file)) - names(conda_file(file)[0])
    assert not missing, f"env/{file} lacks {sorted(missing)} of pyproject's {MIRRORS[file]}"


@pytest.mark.parametrize("file", sorted(MIRRORS))
def test_conda_file_lists_nothing_its_group_does_not(file):
    packages = conda_file(file)[0]
    extra = names(packages) - names(mirrored(file)) - CONDA_ONLY
    assert not extra, (
        f"env/{file} lists {sorted(extra)}, which pyproject's {MIRRORS[file]} does not"
    )
    assert len(packages) == len(names(packages)), f"env/{file} lists a package twice"


@pytest.mark.parametrize("file", sorted(MIRRORS))
def test_conda_file_has_the_ranges_of_its_group(file):
    wanted = {r.name: r.range for r in mirrored(file)}
    differ = {
        r.name: (sorted(r.range), sorted(wanted[r.name]))
        for r in conda_file(file)[0]
        if r.name in wanted and r.range != wanted[r.name]
    }
    assert not differ, f"env/{file} has other ranges than pyproject (env, pyproject): {differ}"


@pytest.mark.parametrize("file", sorted(MIRRORS))
def test_conda_file_installs_the_project_last(file):
    options = conda_file(file)[1]
    assert options[-1:] == [INSTALL_PROJECT], (
        f"env/{file}'s pip section must end with `{INSTALL_PROJECT}` (conda runs pip in env/, "
        f"where `-e .` finds no project), not {options}"
    )


def test_core_dependencies_have_no_tensorflow():
    core = names(pyproject_groups()[CORE])
    assert not core & TENSORFLOW_STACK, (
        f"pyproject's core dependencies hold {sorted(core & TENSORFLOW_STACK)}, which the API "
        "image must not install: move them to the `encoder` extra"
    )
