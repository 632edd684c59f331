"""`csft data masakhaner --from DIR`: a clone of the public repository (its layout) or a
folder already in ours gives the layout the trainer reads; a missing file is a usage error
naming it; English dev is held out of train when the source has none."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from service.cli import app
from trainer.masakhaner_data import NER_DIR, RAW_TEXT

SENTENCE = "Musa B-PER\nya O\nisa O\nKano B-LOC\n"


def _upstream_clone(root: Path, en_sentences: int = 1200, with_dev: bool = False) -> Path:
    for split in ("train", "test") + (("dev",) if with_dev else ()):
        f = root / NER_DIR / "en" / f"{split}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("\n".join(f"W{i} O\nParis B-LOC\n" for i in range(en_sentences)))
    for split in ("dev", "test"):
        f = root / NER_DIR / "hau" / f"{split}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(SENTENCE)
    raw = root / RAW_TEXT["hau"]
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("Ina son karatu.\nYau ana ruwan sama.\n")
    return root


def test_from_a_clone_of_the_public_repository(tmp_path):
    src = _upstream_clone(tmp_path / "masakhane-ner")
    out = tmp_path / "data"
    result = CliRunner().invoke(app, ["data", "masakhaner", "--out", str(out), "--languages", "hau", "--from", str(src)])
    assert result.exit_code == 0, result.output
    assert (out / "text/hau.txt").read_text().startswith("Ina son")
    assert (out / "ner/hau/test.txt").read_text() == SENTENCE
    train = [s for s in (out / "ner/en/train.txt").read_text().split("\n\n") if s.strip()]
    dev = [s for s in (out / "ner/en/dev.txt").read_text().split("\n\n") if s.strip()]
    assert (len(train), len(dev)) == (200, 1000) and "held out" in result.output
    assert not set(train) & set(dev)


def test_from_a_folder_in_our_layout_and_a_missing_file(tmp_path):
    first = tmp_path / "first"
    CliRunner().invoke(app, ["data", "masakhaner", "--out", str(first), "--languages", "hau", "--from",
                             str(_upstream_clone(tmp_path / "clone"))])
    again = CliRunner().invoke(app, ["data", "masakhaner", "--out", str(tmp_path / "again"), "--languages", "hau",
                                     "--from", str(first)])
    assert again.exit_code == 0 and (tmp_path / "again/ner/en/dev.txt").read_text() == (first / "ner/en/dev.txt").read_text()
    missing = CliRunner().invoke(app, ["data", "masakhaner", "--out", str(tmp_path / "x"), "--languages", "swa",
                                       "--from", str(first)])
    assert missing.exit_code == 2 and "ner/swa/dev.txt" in missing.output
