"""Build the three container images with buildah and smoke-test them (`make image-test`).

What it does, timing each step (logs of every command in var/image-test/logs/):

1. checks the tools: buildah and mmdebstrap (Debian: `apt-get install -y buildah mmdebstrap`);
2. makes a stand-in for the Dockerfile's base `python:3.11-slim-bookworm` from Debian's
   packages with mmdebstrap (bookworm ships Python 3.11; python3, python3-venv, python3-pip,
   ca-certificates), tagged under the name the Dockerfile's FROM uses: no registry is needed,
   and `docker build` on a normal machine pulls the real base. Made once, then reused. The
   stand-in also trusts the local CA certificates this machine adds to its own store
   (/usr/local/share/ca-certificates, as update-ca-certificates does), so pip inside the build
   works behind a TLS-inspecting proxy;
3. builds the targets api, embedder and trainer of deployment/docker/Dockerfile (`buildah bud
   --isolation chroot --storage-driver vfs --pull=never`, docker format so that HEALTHCHECK is
   kept), tagged dc-api:test, dc-embedder:test, dc-trainer:test, with the build args VERSION
   (pyproject.toml), GIT_REVISION (git HEAD) and EMBEDDER_FINGERPRINT (the fingerprint of the
   installed weights package, as `make export` computes it). No layer cache: vfs keeps a full
   copy of the file system for every cached step (about 40 GB for the three images), where an
   uncached build keeps only the images (about 8 GB), so every run builds all three;
4. checks each image: its user (uid 10001), entrypoint (tini), labels, HEALTHCHECK, stop signal
   and ports, and inside it: no compiler, and no TensorFlow in the API image once
   pyproject.toml has the `encoder` extra (TensorFlow must be there in the other two);
5. takes a PostgreSQL database as the tests do (DC_TEST_DATABASE_URL, else the server on
   127.0.0.1:5432, else a throwaway cluster from Debian's binaries: tests/conftest.py's
   PgCluster), a scratch database dropped at the end; migrates it with the trainer image
   (`boot.sh migrate`) and trains and promotes the demo models with it (`boot.sh demo`, about
   4 minutes: this exercises the one-off jobs compose and ECS run, rather than copying the
   models of var/), the artifacts in var/image-test/run/artifacts, mounted at the images'
   DC_ARTIFACTS_DIR;
6. runs the embedder and the API from their images (`buildah run --isolation chroot`, whose
   network is the host's: free loopback ports via DC_EMBEDDER_PORT and DC_API_PORT), the API in
   remote mode against the embedder and the database; waits for /ready; runs the image's own
   HEALTHCHECK command; POSTs a prediction and finds its row in `inferences` by request_id;
   then sends predictions while SIGTERM goes to the API's init process and checks that every
   answered prediction has its row and that the API exited 0 (graceful stop);
7. prints a summary (wall time, step times, image sizes, the prediction and its row) and saves
   it as var/image-test/summary.json and summary.md. Exit status 0 only if every check passed
   (1: a check failed, 2: a tool is missing).

Every process started is stopped on exit, Ctrl-C included. `--fresh` removes the image store
(var/image-test/storage: the base and the images) first; `--clean` only removes
var/image-test/ and exits. Measured on a 2-core machine: 19-20 minutes, from nothing or with
the base made (base 40 s; builds of 1.2-1.3, 3.5-4.7 and 5.9-6.8 minutes; the demo models 4-6
minutes; the rest a few seconds each).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

WORK = REPO / "var" / "image-test"
STORAGE, RUNROOT, LOGS, RUN = WORK / "storage", WORK / "runroot", WORK / "logs", WORK / "run"
DOCKERFILE = "deployment/docker/Dockerfile"
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"  # the Dockerfile's FROM, in full
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
TARGETS = ("api", "embedder", "trainer")
LOCAL_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
IMAGE_UID = 10001  # the images' `dc` user
ARTIFACTS_IN_IMAGE = "/var/lib/dc/artifacts"  # DC_ARTIFACTS_DIR of the images
DEMO_MODEL, DEMO_TEXT = "banking77", "I lost my card"
SIGTERM_AFTER = 20  # answered predictions before the API gets SIGTERM
READY_TIMEOUT_S = 300
INSTALL_HINT = "on Debian or Ubuntu, as root: apt-get install -y buildah mmdebstrap"

# Run inside each image as its user: what the final stages must (not) contain.
PROBE = (
    "import importlib.util, json, os, shutil; print(json.dumps({'uid': os.getuid(), "
    "'tensorflow': importlib.util.find_spec('tensorflow') is not None, "
    "'compilers': [c for c in ('cc', 'gcc', 'g++', 'clang', 'make') if shutil.which(c)], "
    "'tini': shutil.which('tini')}))"
)


def say(message: str) -> None:
    print(f"[image-test] {message}", flush=True)


class Failed(Exception):
    """A check failed: the message says which and why."""


@dataclass
class Report:
    """What the run found: the summary's content, filled in step by step."""

    started: float = field(default_factory=time.monotonic)
    steps: dict[str, float] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    images: dict[str, dict] = field(default_factory=dict)
    facts: dict = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        say(f"{name} ...")
        began = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - began, 1)
            say(f"{name}: {self.steps[name]:.1f} s")

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        """Record a check; a failed one ends the run (the summary is still written)."""
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        say(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        if not ok:
            raise Failed(f"{name}: {detail}")

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check["ok"] for check in self.checks)


class Buildah:
    """buildah on the test's own store (var/image-test/), so the run is self-contained."""

    def __init__(self) -> None:
        self.prefix = [
            "buildah",
            "--root",
            str(STORAGE),
            "--runroot",
            str(RUNROOT),
            "--storage-driver",
            "vfs",
        ]

    def run(self, *args: str, log: Path | None = None) -> str:
        """Run a buildah command; return its stdout. With `log`, the output goes there and a
        failure shows its tail."""
        command = [*self.prefix, *args]
        if log is None:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise Failed(f"{' '.join(args[:2])} failed: {done.stderr.strip()}")
            return done.stdout
        with log.open("w") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        if done.returncode:
            raise Failed(f"{' '.join(args[:2])} failed (exit {done.returncode}):\n{tail(log)}")
        return log.read_text()

    def has_image(self, name: str) -> bool:
        command = [*self.prefix, "inspect", "--type", "image", name]
        return subprocess.run(command, capture_output=True).returncode == 0

    def image_config(self, name: str) -> dict:
        """The image's Docker config (User, Entrypoint, Cmd, Labels, Healthcheck, ...)."""
        return json.loads(self.run("inspect", "--type", "image", name))["Docker"]["config"]

    def image_size(self, name: str) -> int:
        """Bytes of the image's layers, uncompressed (what `docker images` shows)."""
        manifest = json.loads(json.loads(self.run("inspect", "--type", "image", name))["Manifest"])
        return sum(int(layer["size"]) for layer in manifest["layers"])


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def missing_tools() -> list[str]:
    return [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]


def make_base(buildah: Buildah, mirror: str) -> None:
    """The stand-in base image from Debian bookworm's packages, tagged as the Dockerfile's FROM."""
    tarball = WORK / "base.tar"
    command = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={BASE_PACKAGES}",
        "--aptopt=Acquire::Retries 3",
    ]
    if LOCAL_CA_DIR.is_dir() and any(LOCAL_CA_DIR.iterdir()):
        command += [
            f"--customize-hook=copy-in {LOCAL_CA_DIR} {LOCAL_CA_DIR.parent}",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    sources = [f"deb {mirror} bookworm main", f"deb {mirror} bookworm-updates main"]
    log = LOGS / "base.log"
    with log.open("w") as out:
        done = subprocess.run(
            [*command, "bookworm", str(tarball), *sources], stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode:
        raise Failed(f"mmdebstrap failed (exit {done.returncode}), mirror {mirror}:\n{tail(log)}")
    try:
        container = buildah.run("from", "scratch").strip()
        buildah.run("add", container, str(tarball), "/")
        # What the official image sets that the build relies on.
        buildah.run("config", "--env", "LANG=C.UTF-8", "--cmd", "python3", container)
        buildah.run("commit", "--rm", "--format", "docker", container, BASE_IMAGE)
    finally:
        tarball.unlink(missing_ok=True)


def expected_labels() -> dict[str, str]:
    """The build args, which the labels must carry: pyproject's version, git HEAD, and the
    fingerprint of the encoder the installed weights package exports to."""
    from dc.nlp.export import compute_fingerprint, find_minilm_source

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    revision = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "VERSION": version,
        "GIT_REVISION": revision or "unknown",
        "EMBEDDER_FINGERPRINT": compute_fingerprint(find_minilm_source()),
    }


def split_landed() -> bool:
    """Whether pyproject.toml keeps TensorFlow in an `encoder` extra (out of the API image)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return "encoder" in project.get("optional-dependencies", {})


def build(buildah: Buildah, target: str, args: dict[str, str]) -> None:
    """`buildah bud` of one target. No layer cache: vfs keeps a full copy of the file system
    for every cached step (about 40 GB for the three images), where an uncached build keeps
    only the images."""
    build_args = [item for key, value in args.items() for item in ("--build-arg", f"{key}={value}")]
    buildah.run(
        "bud",
        "--isolation",
        "chroot",
        "--pull=never",
        "--layers=false",
        "--force-rm",  # no working container left behind by a failed step
        "--format",
        "docker",
        "--target",
        target,
        "--tag",
        f"dc-{target}:test",
        "--file",
        DOCKERFILE,
        *build_args,
        str(REPO),
        log=LOGS / f"build-{target}.log",
    )


def check_image(report: Report, buildah: Buildah, target: str, labels: dict[str, str]) -> None:
    """The image's configuration and, run inside it, what it contains."""
    image = f"dc-{target}:test"
    config = buildah.image_config(image)
    have = config.get("Labels") or {}
    want = {
        "org.opencontainers.image.version": labels["VERSION"],
        "org.opencontainers.image.revision": labels["GIT_REVISION"],
        "org.opencontainers.image.title": f"dc-{target}",
    }
    if target != "api":
        want["dc.embedder.fingerprint"] = labels["EMBEDDER_FINGERPRINT"]
    wrong = {key: have.get(key) for key, value in want.items() if have.get(key) != value}
    report.check(f"{target}: labels", not wrong, f"wrong: {wrong}" if wrong else "")
    report.check(
        f"{target}: user 10001 (dc)",
        config.get("User") == f"{IMAGE_UID}:{IMAGE_UID}",
        f"User={config.get('User')!r}",
    )
    entrypoint = config.get("Entrypoint") or []
    report.check(f"{target}: tini is the entrypoint", entrypoint[:1] == ["tini"], str(entrypoint))
    report.check(f"{target}: stop signal", config.get("StopSignal") == "SIGTERM")
    test = (config.get("Healthcheck") or {}).get("Test") or []
    if target == "trainer":
        report.check(f"{target}: no health probe (a job)", test == ["NONE"], str(test))
    else:
        report.check(f"{target}: HEALTHCHECK", test[:1] == ["CMD"], str(test))
        port = {"api": "8000/tcp", "embedder": "8501/tcp"}[target]
        exposed = sorted(config.get("ExposedPorts") or {})
        report.check(f"{target}: exposes {port}", exposed == [port], str(exposed))

    container = buildah.run("from", "--pull-never", image).strip()
    try:
        output = buildah.run("run", "--isolation", "chroot", container, "--", "python", "-c", PROBE)
    finally:
        buildah.run("rm", container)
    found = json.loads(output.strip().splitlines()[-1])
    report.check(f"{target}: runs as uid {IMAGE_UID}", found["uid"] == IMAGE_UID, str(found["uid"]))
    report.check(f"{target}: no compiler", not found["compilers"], ", ".join(found["compilers"]))
    report.check(f"{target}: tini installed", bool(found["tini"]), str(found["tini"]))
    if target != "api":
        report.check(f"{target}: has TensorFlow", found["tensorflow"])
    elif split_landed():
        report.check("api: no TensorFlow", not found["tensorflow"])
    else:
        say("api: pyproject.toml has no `encoder` extra yet, so TensorFlow is in the API image")
    report.images[target] = {
        "size_bytes": buildah.image_size(image),
        "tensorflow": found["tensorflow"],
        "labels": {key: have.get(key) for key in sorted(have)},
    }


# --- the database ---------------------------------------------------------------------------


def scratch_database(stack: ExitStack) -> tuple[str, str]:
    """A fresh database, dropped on exit, on the server the tests use; returns (url, where)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from persistence.db import is_reachable

    admin = os.environ.get("DC_TEST_DATABASE_URL", LOCAL_POSTGRES)
    where = f"the server at {make_url(admin).render_as_string(hide_password=True)}"
    if not is_reachable(admin):
        from tests.conftest import PgCluster

        cluster = PgCluster()
        stack.callback(cluster.remove)
        cluster.init()
        cluster.start()
        admin, where = cluster.url, f"a throwaway cluster on port {cluster.port}"
    name = f"dc_image_test_{os.getpid()}_{secrets.token_hex(3)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    stack.callback(drop)
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    return url, f"scratch database {name} on {where}"


def rows_of(url: str, request_ids: list[str]) -> list[dict]:
    """The `inferences` rows of these requests."""
    from sqlalchemy import bindparam, text

    from persistence.db import make_engine

    query = text(
        "SELECT request_id, item, model, version, predicted_label, probability, input_text,"
        " embedder_fingerprint FROM inferences WHERE request_id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query, {"ids": request_ids})]
    finally:
        engine.dispose()


def wait_rows(url: str, request_ids: list[str], timeout_s: float = 15.0) -> list[dict]:
    """The rows of these requests, waiting a little for the inference log's writer."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = rows_of(url, request_ids)
        if len({row["request_id"] for row in rows}) == len(set(request_ids)):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


# --- containers -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Container:
    """A working container of one image, and the processes run in it (`buildah run`)."""

    def __init__(self, buildah: Buildah, image: str, stack: ExitStack) -> None:
        self.buildah, self.image = buildah, image
        self.config = buildah.image_config(image)
        self.name = buildah.run("from", "--pull-never", image).strip()
        self.processes: list[subprocess.Popen] = []
        stack.callback(self.remove)

    def command(
        self,
        args: list[str],
        env: dict[str, str],
        volumes: dict[Path, str],
        entrypoint: bool = True,
    ) -> list[str]:
        """`buildah run` of `args`, after the image's entrypoint as a runtime runs a container
        (`entrypoint` false: `args` alone, as a runtime runs a HEALTHCHECK)."""
        options = ["--isolation", "chroot"]
        # tini is PID 1 under a container runtime; here it is not, so it registers as the
        # subreaper of the processes below it instead.
        for key, value in {"TINI_SUBREAPER": "1", **env}.items():
            options += ["--env", f"{key}={value}"]
        for host, inside in volumes.items():
            options += ["--volume", f"{host}:{inside}"]
        first = (self.config.get("Entrypoint") or []) if entrypoint else []
        return [*self.buildah.prefix, "run", *options, self.name, "--", *first, *args]

    def start(
        self, args: list[str], env: dict[str, str], volumes: dict[Path, str], log: Path
    ) -> subprocess.Popen:
        with log.open("w") as out:
            process = subprocess.Popen(
                self.command(args, env, volumes),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches this script only, which stops it
            )
        self.processes.append(process)
        return process

    def job(
        self, args: list[str], env: dict[str, str], volumes: dict[Path, str], log: Path
    ) -> None:
        """Run a job to its end; a non-zero exit fails the run with the log's tail."""
        code = self.start(args, env, volumes, log).wait()
        if code:
            raise Failed(f"{self.image} {' '.join(args)} exited {code}:\n{tail(log)}")

    def init_pid(self, process: subprocess.Popen) -> int | None:
        """The image's init process (tini) below a `buildah run` process."""
        return next((pid for pid in descendants(process.pid) if comm(pid) == "tini"), None)

    def stop(self, process: subprocess.Popen, timeout_s: float = 45.0) -> int:
        """SIGTERM to the image's init, as a runtime stops a container; SIGKILL after
        `timeout_s`. Returns the exit status."""
        if process.poll() is None:
            init = self.init_pid(process)
            with suppress(ProcessLookupError):  # it has just exited
                os.kill(init or process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                for pid in [process.pid, *descendants(process.pid)]:
                    with suppress(ProcessLookupError):  # it has just exited
                        os.kill(pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def remove(self) -> None:
        for process in self.processes:
            self.stop(process)
        subprocess.run([*self.buildah.prefix, "rm", self.name], capture_output=True)


def wait_ready(url: str, process: subprocess.Popen, log: Path, what: str) -> None:
    import requests

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise Failed(f"{what} exited {process.returncode} before /ready:\n{tail(log)}")
        try:
            if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise Failed(f"{what} not ready after {READY_TIMEOUT_S} s:\n{tail(log)}")
        time.sleep(0.5)


def demo_texts() -> list[str]:
    """Real banking phrases, all different, for the predictions sent around SIGTERM."""
    with (REPO / "data" / "banking77" / "test.csv").open(newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def predictions_through_sigterm(
    report: Report, api: Container, process: subprocess.Popen, url: str
) -> tuple[list[str], int]:
    """Send predictions until the API stops accepting; SIGTERM its init after SIGTERM_AFTER
    answers. Returns the answered request ids and the API's exit status."""
    import requests

    answered: list[str] = []
    errors: list[str] = []
    stopping = threading.Event()

    def send() -> None:
        with requests.Session() as session:
            for text in demo_texts():
                try:
                    answer = session.post(
                        f"{url}/predict/{DEMO_MODEL}", json={"text": text}, timeout=30
                    )
                except requests.ConnectionError:
                    if stopping.is_set():
                        return  # the listening socket is closed: the stop has begun
                    errors.append("connection error before SIGTERM")
                    return
                if answer.status_code == 200:
                    answered.append(answer.json()["request_id"])
                else:
                    errors.append(f"{answer.status_code} {answer.text[:200]}")
                    return

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    while len(answered) < SIGTERM_AFTER and sender.is_alive():
        time.sleep(0.05)
    before = len(answered)
    stopping.set()
    init = api.init_pid(process)
    report.check("api: init process found", init is not None, f"tini pid {init}")
    os.kill(init, signal.SIGTERM)
    began = time.monotonic()
    try:
        code = process.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    report.facts["sigterm"] = {
        "answered_before": before,
        "answered_in_all": len(answered),
        "stop_seconds": round(time.monotonic() - began, 1),
    }
    sender.join(30)
    report.check("api: predictions answered 200 until the stop", not errors, "; ".join(errors))
    report.check("api: graceful exit on SIGTERM", code == 0, f"exit status {code}")
    return answered, code


# --- the run --------------------------------------------------------------------------------


def smoke(report: Report, buildah: Buildah, stack: ExitStack) -> None:
    """Steps 5 and 6: the jobs, the services, a prediction, SIGTERM."""
    import requests

    with report.step("database"):
        database_url, where = scratch_database(stack)
        report.facts["database"] = where
    shutil.rmtree(RUN, ignore_errors=True)
    artifacts, spool = RUN / "artifacts", RUN / "spool"
    for folder in (artifacts, spool):
        folder.mkdir(parents=True)
        os.chown(folder, IMAGE_UID, IMAGE_UID)  # the images' user writes there
    db_env = {"DC_DATABASE_URL": database_url}
    shared = {artifacts: ARTIFACTS_IN_IMAGE}

    trainer = Container(buildah, "dc-trainer:test", stack)
    with report.step("trainer: boot.sh migrate"):
        trainer.job(["migrate"], db_env, shared, LOGS / "migrate.log")
    with report.step("trainer: boot.sh demo (train and promote the demo models)"):
        trainer.job(["demo"], db_env, shared, LOGS / "demo.log")

    embedder = Container(buildah, "dc-embedder:test", stack)
    embedder_port = free_port()
    embedder_env = {"DC_EMBEDDER_HOST": "127.0.0.1", "DC_EMBEDDER_PORT": str(embedder_port)}
    embedder_url = f"http://127.0.0.1:{embedder_port}"
    with report.step("embedder: start until /ready"):
        embedder_process = embedder.start(
            embedder.config["Cmd"], embedder_env, {}, LOGS / "embedder.log"
        )
        wait_ready(embedder_url, embedder_process, LOGS / "embedder.log", "the embedder")

    api = Container(buildah, "dc-api:test", stack)
    api_port = free_port()
    api_env = {
        **db_env,
        "DC_API_HOST": "127.0.0.1",
        "DC_API_PORT": str(api_port),
        "DC_EMBEDDER_URL": embedder_url,
    }
    api_url = f"http://127.0.0.1:{api_port}"
    with report.step("api: boot.sh api (migrations, then gunicorn) until /ready"):
        api_process = api.start(
            api.config["Cmd"], api_env, {**shared, spool: "/var/lib/dc/spool"}, LOGS / "api.log"
        )
        wait_ready(api_url, api_process, LOGS / "api.log", "the API")

    for container, env in ((api, api_env), (embedder, embedder_env)):
        probe = container.config["Healthcheck"]["Test"][1:]  # after "CMD"
        done = subprocess.run(
            container.command(probe, env, {}, entrypoint=False), capture_output=True, text=True
        )
        report.check(
            f"{container.image}: its HEALTHCHECK passes", done.returncode == 0, done.stderr[-300:]
        )

    with report.step(f"prediction: POST /predict/{DEMO_MODEL}"):
        answer = requests.post(f"{api_url}/predict/{DEMO_MODEL}", json={"text": DEMO_TEXT})
        report.check("api: prediction answered", answer.status_code == 200, answer.text[:300])
        prediction = answer.json()
        rows = wait_rows(database_url, [prediction["request_id"]])
        report.check("api: its row in inferences", len(rows) == 1, f"{len(rows)} rows")
    row = rows[0]
    report.check(
        "api: the row matches the answer",
        row["predicted_label"] == prediction["label"]
        and row["version"] == prediction["version"]
        and row["input_text"] == DEMO_TEXT,
        f"{row['predicted_label']} {row['version']}",
    )
    report.facts["prediction"] = {"request": {"text": DEMO_TEXT}, "answer": prediction}
    report.facts["row"] = {key: str(value) for key, value in row.items()}

    with report.step("SIGTERM under load: every answered prediction has its row"):
        answered, _ = predictions_through_sigterm(report, api, api_process, api_url)
        found = {row["request_id"] for row in rows_of(database_url, answered)}
        lost = [request_id for request_id in answered if request_id not in found]
        report.check(
            "api: no row lost through SIGTERM",
            not lost and len(answered) >= SIGTERM_AFTER,
            f"{len(answered)} answered, {len(found)} rows, lost {len(lost)}",
        )
    with report.step("embedder: SIGTERM"):
        code = embedder.stop(embedder_process)
        report.check("embedder: graceful exit on SIGTERM", code == 0, f"exit status {code}")


def write_summary(report: Report) -> None:
    wall = round(time.monotonic() - report.started, 1)
    summary = {
        "passed": report.passed,
        "wall_seconds": wall,
        "steps_seconds": report.steps,
        "images": report.images,
        **report.facts,
        "checks": report.checks,
    }
    (WORK / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = [
        f"# make image-test: {'passed' if report.passed else 'FAILED'} in {wall / 60:.1f} min",
        "",
        "| image | size (MB) | TensorFlow |",
        "|---|---:|---|",
        *(
            f"| dc-{name}:test | {image['size_bytes'] / 1e6:,.0f} | {image['tensorflow']} |"
            for name, image in report.images.items()
        ),
        "",
        "| step | seconds |",
        "|---|---:|",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in report.steps.items()),
        "",
    ]
    if "prediction" in report.facts:
        answer, row = report.facts["prediction"]["answer"], report.facts["row"]
        lines += [
            f"Prediction for {DEMO_TEXT!r}: `{answer['label']}` ({answer['probability']}),"
            f" {answer['model']} {answer['version']}, request {answer['request_id']}.",
            f"Its row: {row['predicted_label']} {row['probability']} version {row['version']}"
            f" item {row['item']}.",
        ]
    if "sigterm" in report.facts:
        lines.append(f"SIGTERM: {json.dumps(report.facts['sigterm'])}.")
    failed = [check for check in report.checks if not check["ok"]]
    lines += [f"FAILED: {check['check']}: {check['detail']}" for check in failed]
    (WORK / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    say(f"summary in {(WORK / 'summary.md').relative_to(REPO)} and summary.json")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mirror",
        default=os.environ.get("DC_IMAGE_TEST_MIRROR", DEFAULT_MIRROR),
        help="Debian mirror for the stand-in base (bookworm and bookworm-updates); default: "
        f"$DC_IMAGE_TEST_MIRROR, else {DEFAULT_MIRROR}. The images' own apt-get uses the "
        "sources of the base",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="remove the image store first (the stand-in base and the images)",
    )
    parser.add_argument("--clean", action="store_true", help="remove var/image-test/ and exit")
    return parser.parse_args()


def _interrupt(signum, frame) -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every cleanup runs either way."""
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    if args.clean or args.fresh:
        shutil.rmtree(WORK if args.clean else STORAGE, ignore_errors=True)
        say(f"removed {(WORK if args.clean else STORAGE).relative_to(REPO)}")
        if args.clean:
            return 0
    missing = missing_tools()
    if missing:
        say(f"missing: {', '.join(missing)}. Install them ({INSTALL_HINT}), then run again.")
        return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    report = Report()
    buildah = Buildah()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ExitStack() as stack:
            # The store is this test's own: a working container in it is one that an
            # interrupted run (or a failed build step) left behind, and holds a full copy.
            buildah.run("rm", "--all")
            if buildah.has_image(BASE_IMAGE):
                say(f"stand-in base {BASE_IMAGE}: already made")
            else:
                with report.step(f"stand-in base {BASE_IMAGE} (mmdebstrap, {args.mirror})"):
                    make_base(buildah, args.mirror)
            labels = expected_labels()
            report.facts["build_args"] = labels
            for target in TARGETS:
                with report.step(f"build {target}"):
                    build(buildah, target, labels)
                check_image(report, buildah, target, labels)
            smoke(report, buildah, stack)
    except Failed as failure:
        say(f"FAILED: {failure}")
        if not report.checks or report.checks[-1]["ok"]:
            report.checks.append({"check": "run", "ok": False, "detail": str(failure)[:2000]})
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped")
        report.checks.append({"check": "run", "ok": False, "detail": "interrupted"})
    write_summary(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
