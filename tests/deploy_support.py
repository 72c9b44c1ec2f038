"""scripts/deploy_lint.py as a module, for the tests of the deployment's files.

scripts/ is not a package, so the script is loaded by its path, once per session.
"""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy_lint = _load("deploy_lint")
