"""`dc`: one command for the model's whole path, installed by `pip install -e .` (make setup).

    dc load --model NAME FILE.csv ...      training rows into the database
    dc train --config NAME                 train configs/NAME.toml (a version, its reports)
    dc versions NAME                       the model's versions, their figures and status
    dc promote NAME VERSION                promote a version (the promotion rule applies)
    dc rollback NAME                       promote the previous version again
    dc report NAME                         the production report of the served model
    dc serve                               the embedder and the prediction API (foreground)

`load`, `train` and `report` are the scripts of `scripts/` (each subcommand takes the same
options and has the same `--help`); `serve` is `scripts/serve.sh`. `versions`, `promote` and
`rollback` read and write the model registry of DC_DATABASE_URL. The serving API picks a
promotion or a rollback up within DC_MODEL_REFRESH_S.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from dc.config import REPO_ROOT, get_settings
from dc.model_config import DEFAULT_REGION

SCRIPTS = REPO_ROOT / "scripts"
# Subcommand -> (script, one line of help): the script's own parser takes the rest.
DELEGATED = {
    "load": ("load_training_data.py", "load labelled phrases from CSV files as training rows"),
    "train": ("train.py", "train configured models into new versions (configs/NAME.toml)"),
    "report": ("report.py", "write a served model's production report (drift, accuracy, ...)"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] in DELEGATED:
        return run_script(argv[0], argv[1:])
    if argv[0] == "serve":
        if len(argv) > 1 and argv[1] in ("-h", "--help"):
            parser.parse_args(["serve", "--help"])
        os.execvp("bash", ["bash", str(SCRIPTS / "serve.sh")])
    args = parser.parse_args(argv)
    return args.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dc",
        description="The path of a model, from its training rows to serving: load, train, "
        "look at the versions, promote or roll back, report, serve. Settings are DC_* "
        "environment variables (the README's table); the database is DC_DATABASE_URL "
        "(empty: var/dc.sqlite).",
        epilog="Run `dc COMMAND --help` for a command's options. Adding a model: the README's "
        '"Add a model".',
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in DELEGATED.items():
        commands.add_parser(name, help=summary, add_help=False)

    versions = commands.add_parser("versions", help="a model's versions, figures and status")
    versions.add_argument("model")
    versions.add_argument("--region", default=DEFAULT_REGION, help="(default: %(default)s)")
    versions.set_defaults(run=list_versions)

    promote = commands.add_parser(
        "promote",
        help="promote a version: refused when its weighted F1 is below the promoted one's by "
        "more than DC_PROMOTION_TOLERANCE, unless --force",
    )
    promote.add_argument("model")
    promote.add_argument("version", help="a version of `dc versions MODEL`")
    promote.add_argument("--region", default=DEFAULT_REGION, help="(default: %(default)s)")
    promote.add_argument("--force", action="store_true", help="promote even if the rule refuses")
    promote.set_defaults(run=promote_version)

    rollback = commands.add_parser("rollback", help="promote the previous version again")
    rollback.add_argument("model")
    rollback.add_argument("--region", default=DEFAULT_REGION, help="(default: %(default)s)")
    rollback.set_defaults(run=roll_back)

    commands.add_parser(
        "serve",
        help="serve the embedder and the prediction API in the foreground (scripts/serve.sh, "
        "what `make run` ends with)",
    )
    return parser


def run_script(command: str, argv: list[str]) -> int:
    """Run `scripts/<script>`'s main with `argv` (its parser, its --help)."""
    script = SCRIPTS / DELEGATED[command][0]
    namespace = runpy.run_path(str(script), run_name=f"dc_{command}")
    sys.argv = [f"dc {command}", *argv]  # the script's usage line names the subcommand
    try:
        return int(namespace["main"](argv) or 0)
    except SystemExit as exit_:  # argparse: --help, a usage error
        return exit_.code if isinstance(exit_.code, int) else 1


def _registry():
    from persistence.db import make_engine, session_factory, upgrade

    settings = get_settings()
    url = settings.database_url_or_default
    upgrade(url)
    return settings, session_factory(make_engine(url))


def list_versions(args: argparse.Namespace) -> int:
    from persistence.registry import list_versions as versions_of

    _, new_session = _registry()
    with new_session() as session:
        rows = versions_of(session, args.model, args.region)
    if not rows:
        print(f"no versions of {args.model!r} in region {args.region!r}", file=sys.stderr)
        return 1
    print(f"{'version':18} {'status':9} {'accuracy':>8} {'weighted F1':>11} {'macro F1':>8}")
    for row in rows:
        metrics = row.metrics or {}
        figures = [metrics.get(key) for key in ("accuracy", "weighted_f1", "macro_f1")]
        shown = [f"{100 * value:.2f}" if value is not None else "-" for value in figures]
        print(f"{row.version:18} {row.status:9} {shown[0]:>8} {shown[1]:>11} {shown[2]:>8}")
    return 0


def promote_version(args: argparse.Namespace) -> int:
    from dc.errors import DCError
    from dc.promotion import promote

    settings, new_session = _registry()
    try:
        with new_session() as session:
            row = promote(
                session,
                args.model,
                args.region,
                args.version,
                tolerance=settings.promotion_tolerance,
                force=args.force,
            )
            version = row.version
    except DCError as exc:
        print(f"dc promote: {exc.message}", file=sys.stderr)
        return 1
    print(f"{args.region}/{args.model} {version} is promoted")
    return 0


def roll_back(args: argparse.Namespace) -> int:
    from persistence.registry import RecordNotFound, rollback

    _, new_session = _registry()
    try:
        with new_session() as session:
            version = rollback(session, args.model, args.region).version
    except RecordNotFound as exc:
        print(f"dc rollback: {exc}", file=sys.stderr)
        return 1
    print(f"{args.region}/{args.model} is back on {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
