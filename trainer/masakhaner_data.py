"""``csft data masakhaner``: the MasakhaNER zero-shot setting in the layout the trainer and
``python -m trainer.experiments.masakhaner`` read, from its public source.

Layout written under ``--out``::

    ner/en/{train,dev,test}.txt      English source NER (CoNLL-2003, 3 tags), BIO, CoNLL style
    ner/<lang>/{dev,test}.txt        target-language NER, same 3 tags
    text/<lang>.txt                  raw news text of the target language, one line each

Source: the public ``masakhane-io/masakhane-ner`` GitHub repository, read over HTTPS
(``MasakhaNER2.0/transfer_corpus/`` for NER, ``text_by_language/`` for raw text), or,
offline, a local directory: a clone of that repository, or a folder already in the layout
above. Upstream has no English dev file: the last 1,000 English training sentences are
then held out as dev (and removed from train), and the command says so.

Licences (upstream's): NER annotations CC BY-NC 4.0; the English part derives from
CoNLL-2003 (Reuters) and is for research use; raw texts carry their news sites' licences.
Nothing is redistributed by this project: the command fetches into a folder you choose.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

REPO_RAW = "https://raw.githubusercontent.com/masakhane-io/masakhane-ner/HEAD"
NER_DIR = "MasakhaNER2.0/transfer_corpus"
RAW_TEXT = {
    "hau": "text_by_language/hausa/hausa.txt",
    "swa": "text_by_language/swahili/voa_clean_final.txt",
    "yor": "text_by_language/yoruba/yoruba.txt",
    "pcm": "text_by_language/naija_pidgin/pidgin_ner_7000.txt",
    "ibo": "text_by_language/igbo/igbo_data10000.txt",
    "kin": "text_by_language/kinyarwanda/kinyarwanda.txt",
    "lug": "text_by_language/luganda/luganda.txt",
    "luo": "text_by_language/luo/LUO.txt",
    "wol": "text_by_language/wolof/sentences.txt",
}
DEV_HOLDOUT = 1000
TIMEOUT_S = 60


def _read(source: str, relative: str) -> bytes | None:
    """Bytes of ``relative`` under ``source`` (a URL prefix or a directory); None if absent."""
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{source}/{relative}", timeout=TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
    path = Path(source) / relative
    return path.read_bytes() if path.is_file() else None


def _local_layout(source: str) -> bool:
    """A directory already in our layout (``ner/``, ``text/``) rather than a clone of upstream."""
    return not source.startswith(("http://", "https://")) and (Path(source) / "ner").is_dir()


def fetch(out: Path, languages: list[str], source: str = REPO_RAW, log=print) -> list[Path]:
    """Write the layout under ``out``; returns the files written. Raises ``FileNotFoundError``
    naming the first file the source lacks, ``OSError`` when it cannot be reached."""
    ours = _local_layout(source)
    wanted: list[tuple[str, str, bool]] = []  # (source path, our path, required)
    for split in ("train", "dev", "test"):
        wanted.append((f"ner/en/{split}.txt" if ours else f"{NER_DIR}/en/{split}.txt", f"ner/en/{split}.txt", split != "dev"))
    for lang in languages:
        for split in ("dev", "test"):
            wanted.append((f"ner/{lang}/{split}.txt" if ours else f"{NER_DIR}/{lang}/{split}.txt", f"ner/{lang}/{split}.txt", True))
        if not ours and lang not in RAW_TEXT:
            raise FileNotFoundError(f"no raw text is known upstream for {lang!r}; known: {', '.join(sorted(RAW_TEXT))}")
        wanted.append((f"text/{lang}.txt" if ours else RAW_TEXT[lang], f"text/{lang}.txt", True))
    written = []
    for theirs, mine, required in wanted:
        data = _read(source, theirs)
        if data is None:
            if required:
                raise FileNotFoundError(f"{source}/{theirs} does not exist")
            continue
        target = out / mine
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
        log(f"{mine}: {len(data):,} bytes from {theirs}")
    dev = out / "ner/en/dev.txt"
    if not dev.exists():
        _hold_out_dev(out / "ner/en/train.txt", dev, DEV_HOLDOUT)
        written.append(dev)
        log(f"ner/en/dev.txt: the source has none; held out the last {DEV_HOLDOUT} English training sentences")
    return written


def _hold_out_dev(train: Path, dev: Path, n: int) -> None:
    sentences = [s for s in train.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    train.write_text("\n\n".join(sentences[:-n]) + "\n\n", encoding="utf-8")
    dev.write_text("\n\n".join(sentences[-n:]) + "\n\n", encoding="utf-8")

