"""Train configured models from the database: one, several, or all of them.

Each run writes a versioned artifact folder (code, data, model, encoders, reports, manifest),
records the version in the model registry, backs it up to S3 when a bucket is configured and,
with --promote, promotes it if it is not worse than the promoted version.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc.config import get_settings  # noqa: E402
from dc.errors import DCError  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402

log = logging.getLogger("train")

EPILOG = """examples:
  python scripts/train.py --config banking77              # train one model (configs/banking77.toml)
  python scripts/train.py --all --promote                  # retrain every model, promote the good
  python scripts/train.py --config clinc150 --promote --force   # promote even if worse
  python scripts/train.py --all --if-missing --promote     # only models with no promoted version

Configs live in DC_CONFIGS_DIR (configs/); the database is DC_DATABASE_URL (empty: var/dc.sqlite);
artifacts go to DC_ARTIFACTS_DIR/<region>/<model>/<version>/; S3 backups need DC_S3_BUCKET.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--config",
        action="append",
        metavar="NAME_OR_PATH",
        help="a config name in the configs folder, or a path to a TOML file (repeatable)",
    )
    which.add_argument("--all", action="store_true", help="every config in the configs folder")
    parser.add_argument("--promote", action="store_true", help="promote each new version")
    parser.add_argument(
        "--force", action="store_true", help="with --promote: promote even if the rule refuses"
    )
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="skip models that already have a promoted version",
    )
    parser.add_argument("--no-backup", action="store_true", help="do not copy versions to S3")
    parser.add_argument("--database-url", help="override DC_DATABASE_URL")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    if args.database_url:
        settings = settings.model_copy(update={"database_url": args.database_url})

    from dc.model_config import load_config, load_configs
    from dc.nlp.embeddings import create_embedder
    from dc.pipeline import require_training_rows, train_model
    from persistence.db import make_engine, session_factory, upgrade
    from persistence.registry import promoted_version

    configs_dir = Path(settings.configs_dir)
    if args.all:
        configs = list(load_configs(configs_dir).values())
    else:
        configs = [
            load_config(Path(c) if c.endswith(".toml") else configs_dir / f"{c}.toml")
            for c in args.config
        ]

    url = settings.database_url_or_default
    upgrade(url)
    engine = make_engine(url)
    if args.if_missing:
        with session_factory(engine)() as session:
            configs = [
                c
                for c in configs
                if promoted_version(session, c.model.name, c.model.region) is None
            ]
        if not configs:
            log.info("every requested model already has a promoted version: nothing to train")
            return 0

    # Every config's rows are checked before the encoder loads: a wrong region fails in a
    # second, saying where the rows are.
    failures = 0
    ready = []
    for config in configs:
        try:
            require_training_rows(config, engine, retries=settings.db_retries)
        except DCError as exc:
            failures += 1
            log.error("%s: %s", config.model.name, exc.message)
            continue
        ready.append(config)
    if not ready:
        return 1

    embedder = create_embedder(settings)
    results = []
    for config in ready:
        started = time.perf_counter()
        try:
            result = train_model(
                config,
                settings,
                embedder=embedder,
                engine=engine,
                promote=args.promote,
                force=args.force,
                backup=not args.no_backup,
            )
        except DCError as exc:
            failures += 1
            log.error("%s: %s", config.model.name, exc.message)
            continue
        seconds = time.perf_counter() - started
        log.info(
            "%s: version %s in %.0f s -> %s",
            config.model.name,
            result.version,
            seconds,
            result.artifact_uri,
        )
        results.append((result, seconds))
    embedder.close()
    if results:
        print(summary_table(results, failures))
    return 1 if failures else 0


def summary_table(results: list, failures: int) -> str:
    """The run's models side by side: test accuracy, weighted and macro F1, time, promotion."""
    lines = [
        "",
        f"{'model':24} {'version':18} {'accuracy':>8} {'weighted F1':>11} {'macro F1':>8} "
        f"{'seconds':>7}  promoted",
    ]
    for result, seconds in results:
        test = result.metrics
        lines.append(
            f"{result.region + '/' + result.name:24} {result.version:18} "
            f"{100 * test['accuracy']:8.2f} {100 * test['weighted_f1']:11.2f} "
            f"{100 * test['macro_f1']:8.2f} {seconds:7.0f}  {'yes' if result.promoted else 'no'}"
        )
    if failures:
        lines.append(f"{failures} model(s) failed: see the errors above")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
