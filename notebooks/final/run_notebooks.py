"""Execute the notebooks of this folder, each in a fresh kernel, and render them to HTML.

    python notebooks/final/run_notebooks.py [NAME ...] [--sample ROWS] [--html-dir DIR]
                                            [--timeout SECONDS]

Every `*.ipynb` of this folder runs (or the ones NAMEd, with or without `.ipynb`), top to
bottom, in a new kernel of this interpreter: ipykernel's own kernel for `sys.executable` (the
project's .venv), whatever kernels are registered for the user, so the notebooks import the
`dc` that is installed here. The kernel starts in this folder with this process's environment:
the DC_* settings (DC_DATABASE_URL, DC_EMBEDDER_MODE, ...) and `DC_NOTEBOOK_SAMPLE` reach the
notebooks as they are (`--sample` sets the latter). Its connection file and IPython profile live
in a temporary folder, so a run writes nothing under the user's home for Jupyter.

A cell that raises fails its notebook (nbclient's CellExecutionError, with the traceback), and
so does a cell running longer than `--timeout` seconds; the other notebooks still run, and the
exit status is 1. The notebooks here are only read: with `--html-dir` each executed notebook is
written there as `<name>.html` (nbconvert, images inline) and `<name>.ipynb`, so their outputs
never reach git (`make notebooks` writes var/notebooks/).

Each notebook ends with a cell printing its summary, one JSON object naming the notebook
(`"notebook": "<name>"`); `summary` reads it back, the run prints it, and
tests/model/test_notebooks.py checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from nbformat import NotebookNode

FOLDER = Path(__file__).resolve().parent
# A notebook cell may take this long (the whole dataset: embedding BANKING77 takes about 1 min).
DEFAULT_TIMEOUT_S = 900
SAMPLE_ENV = "DC_NOTEBOOK_SAMPLE"  # read by notebook_support.sample_size in the kernel
# What Python code prints and warns reaches the notebook; what C libraries write to the
# process's file descriptors (TensorFlow's start-up log) goes to this process's stderr instead
# of every rendered page.
KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False"]


def notebooks(folder: Path = FOLDER, names: Sequence[str] = ()) -> list[Path]:
    """The notebooks to run: every `*.ipynb` of `folder` in name order, or those named.

    Raises:
        FileNotFoundError: a named notebook is not in `folder`.
    """
    if not names:
        return sorted(folder.glob("*.ipynb"))
    paths = [folder / (name if name.endswith(".ipynb") else f"{name}.ipynb") for name in names]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no notebook {missing} in {folder}")
    return paths


def kernel_manager(scratch: Path) -> AsyncKernelManager:
    """A manager of ipykernel's kernel for this interpreter, its connection file in `scratch`.

    No kernel folder is searched (`kernel_dirs=[]`): the only kernel spec is the native one
    ipykernel makes for `sys.executable`, never a `python3` kernel registered for the user or the
    system, which may run another Python without `dc`.
    """
    specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    return AsyncKernelManager(
        kernel_name=NATIVE_KERNEL_NAME,
        kernel_spec_manager=specs,
        # Unix sockets beside the connection file instead of TCP ports on the loopback: no
        # other user of the machine can reach the kernel, and no port is taken.
        transport="ipc",
        connection_file=str(scratch / "kernel.json"),
    )


def kernel_env(overrides: Mapping[str, str] | None, scratch: Path) -> dict[str, str]:
    """The kernel's environment: this process's, then `overrides`, and the IPython profile in
    `scratch` (no user profile or start-up file applies, none is written to the home)."""
    return {**os.environ, **(overrides or {}), "IPYTHONDIR": str(scratch / "ipython")}


def execute(
    path: Path, *, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> NotebookNode:
    """Run the notebook at `path` top to bottom in a fresh kernel; return it with its outputs.

    Args:
        path: the notebook (only read).
        env: variables to set for the kernel over this process's environment.
        timeout: the longest one cell may run, in seconds.

    Raises:
        CellExecutionError: a cell raised (the message holds the cell's traceback).
        CellTimeoutError: a cell ran longer than `timeout`.
    """
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="dc-notebook-") as folder:
        scratch = Path(folder)
        client = NotebookClient(
            notebook,
            km=kernel_manager(scratch),
            timeout=timeout,
            allow_errors=False,
            extra_arguments=KERNEL_ARGUMENTS,
            resources={"metadata": {"path": str(path.parent)}},  # the kernel's working folder
        )
        # cleanup_kc: shut the kernel down afterwards, which nbclient does by default only for
        # a kernel manager of its own making.
        client.execute(env=kernel_env(env, scratch), cleanup_kc=True)
    return notebook


def summary(notebook: NotebookNode) -> dict[str, Any]:
    """The JSON object the notebook's last code cell printed (the notebook's summary).

    Raises:
        ValueError: the last code cell printed no JSON object.
    """
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if not cells:
        raise ValueError("the notebook has no code cell")
    printed = "".join(
        output.get("text", "")
        for output in cells[-1].get("outputs", [])
        if output.output_type == "stream" and output.name == "stdout"
    )
    try:
        value = json.loads(printed)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"the last code cell must print one JSON object (the summary), printed {printed!r}"
        ) from exc
    if not isinstance(value, dict):
        raise ValueError(f"the summary must be a JSON object, got {type(value).__name__}")
    return value


def write_outputs(notebook: NotebookNode, name: str, folder: Path) -> list[Path]:
    """Write the executed notebook as `<name>.html` (images inline) and `<name>.ipynb`."""
    from nbconvert import HTMLExporter

    folder.mkdir(parents=True, exist_ok=True)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    written = [folder / f"{name}.html", folder / f"{name}.ipynb"]
    written[0].write_text(html, encoding="utf-8")
    nbformat.write(notebook, written[1])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every option beside --html-dir can also come from the environment: DC_* "
        f"settings and {SAMPLE_ENV} reach the kernels as they are.",
    )
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all of them)")
    parser.add_argument(
        "--sample",
        metavar="ROWS",
        help=f"rows of the dataset each notebook presents (sets {SAMPLE_ENV}; 'all' for all)",
    )
    parser.add_argument(
        "--html-dir", type=Path, help="write each executed notebook there as HTML and .ipynb"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds one cell may run (default {DEFAULT_TIMEOUT_S})",
    )
    args = parser.parse_args(argv)
    env = {SAMPLE_ENV: args.sample} if args.sample is not None else {}

    failed = []
    for path in notebooks(names=args.names):
        started = time.perf_counter()
        print(f"== {path.name}", flush=True)
        try:
            notebook = execute(path, env=env, timeout=args.timeout)
            result = summary(notebook)
        except (CellExecutionError, CellTimeoutError, ValueError) as exc:
            print(f"{path.name} failed: {exc}", file=sys.stderr, flush=True)
            failed.append(path.name)
            continue
        print(f"{path.name}: {time.perf_counter() - started:.1f} s, {json.dumps(result)}")
        if args.html_dir is not None:
            for written in write_outputs(notebook, path.stem, args.html_dir):
                print(f"  wrote {written}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
