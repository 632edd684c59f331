"""Language-diff training data and head warm-up: packed MLM blocks as the
reference's run_mlm makes them, line mode, and the warm-up of a fresh MLM head that keeps
phase 1's selection about the language.

Tiny BERT without an MLM head (as the e5 / MiniLM bases), synthetic text, CPU.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from diffs_store.format import parse_diff
from tests.test_trainer import base, base_dir, lines, recipe  # noqa: F401  (module fixtures)
from trainer.data.encode import encode_blocks, encode_lines, encode_mlm
from trainer.jobs import head_warmup_length, train_language_diff
from trainer.recipe import PhaseLength


def test_blocks_are_full_sequences_cut_from_the_concatenated_text(base):
    text = lines(30)
    blocks = encode_blocks(base.tokenizer, text, 16)
    stream = [t for line in text for t in base.tokenizer(line)["input_ids"]]  # each line with [CLS] ... [SEP]
    assert len(blocks) == len(stream) // 16 and len(blocks) > 1
    assert all(len(b["input_ids"]) == 16 == len(b["special_tokens_mask"]) for b in blocks)
    assert [t for b in blocks for t in b["input_ids"]] == stream[: 16 * len(blocks)]  # in order, the tail dropped
    # Line mode keeps one (truncated) line per example.
    per_line = encode_mlm(base.tokenizer, text, 16, packed=False)
    assert per_line == encode_lines(base.tokenizer, text, 16) and len(per_line) == 30
    # More tokens per example than line mode: that is the point of packing.
    assert sum(len(b["input_ids"]) for b in blocks) / len(blocks) > sum(len(f["input_ids"]) for f in per_line) / 30


def test_too_little_text_for_one_block_is_a_clear_error(base):
    with pytest.raises(ValueError, match="no block of 512"):
        encode_blocks(base.tokenizer, ["john lives in paris"], 512)


def test_default_warmup_follows_phase_one_for_a_fresh_head_only():
    r = recipe(full=PhaseLength(max_steps=7))
    assert head_warmup_length(r, fresh_head=True) == PhaseLength(max_steps=7)
    assert head_warmup_length(r, fresh_head=False).steps(100, 8) == 0
    explicit = r.with_(head_warmup=PhaseLength(max_steps=3))
    assert head_warmup_length(explicit, fresh_head=True) == head_warmup_length(explicit, fresh_head=False)


@pytest.mark.slow
def test_head_warmup_trains_the_head_alone_and_changes_the_selection(base, tmp_path):
    """Without warm-up, phase 1 starts from a random head and the top-K reflects fitting
    it; after warm-up (the encoder untouched), the selection differs."""
    text = lines(96)

    def train(warmup: int, name: str):
        r = recipe(k=300, head_warmup=PhaseLength(max_steps=warmup), head_warmup_lr=5e-3)
        return train_language_diff(base, "en", text, recipe=r, out_dir=tmp_path / name, dev_lines=lines(40, seed=9),
                                   output=tmp_path / f"{name}.safetensors")

    cold, warm = train(0, "cold"), train(12, "warm")
    theta0 = {"bert." + n: p for n, p in base.model.named_parameters()}
    head = [n for n in warm.trainer.reference if n.startswith("cls.") and warm.trainer.trainable[n].requires_grad]
    assert head
    # The warm-up moved the head, never the encoder: theta_ref of the encoder is theta0.
    for name, ref in warm.trainer.reference.items():
        if name in theta0:
            assert torch.equal(ref, theta0[name]), name
    assert any(not torch.equal(warm.trainer.reference[n], cold.trainer.reference[n]) for n in head)
    # Phase 1 from a warmed head selects other entries.
    selected = {n: m for n, m in warm.trainer.masks.items()}
    differing = sum(int((selected[n] != cold.trainer.masks[n]).sum()) for n in selected)
    assert differing > 0
    # Recorded: steps, rate, and the dev loss right after the warm-up.
    warm_meta = parse_diff((tmp_path / "warm.safetensors").read_bytes()).meta
    cold_meta = parse_diff((tmp_path / "cold.safetensors").read_bytes()).meta
    assert warm_meta.recipe["head_warmup_steps"] == 12 and cold_meta.recipe["head_warmup_steps"] == 0
    assert warm_meta.recipe["mlm_data"] == "blocks of 32 tokens"
    record = warm_meta.metrics["train"]["head_warmup"]
    assert record["steps"] == 12 and record["learning_rate"] == 5e-3 and "mlm_loss" in record["dev_after"]


def test_cli_line_mode_and_warmup_are_recorded(base_dir, tmp_path):
    from trainer import cli

    app = __import__("typer").Typer()
    app.callback()(lambda: None)
    app.add_typer(cli.train_app, name="train")
    (tmp_path / "en.txt").write_text("\n".join(lines(40)) + "\n")
    out = tmp_path / "en.safetensors"
    r = CliRunner().invoke(app, [
        "train", "language", "--base", str(base_dir), "--language", "en", "--train", str(tmp_path / "en.txt"),
        "--k", "200", "-o", str(out), "--full-max-steps", "3", "--sparse-max-steps", "3", "--max-seq-len", "32",
        "--line-by-line", "--head-warmup-steps", "2", "--head-warmup-lr", "1e-3",
    ])
    assert r.exit_code == 0, r.output
    meta = parse_diff(out.read_bytes()).meta
    assert meta.recipe["mlm_packing"] is False and meta.recipe["mlm_data"] == "one line per example"
    assert meta.recipe["head_warmup"] == {"epochs": None, "min_steps": None, "max_steps": 2}
    assert meta.recipe["head_warmup_steps"] == 2 and meta.recipe["head_warmup_lr"] == 1e-3
    assert meta.metrics["train"]["examples"] == 40


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "xlmr"])
def test_a_pretrained_mlm_head_is_kept_and_not_warmed_up(arch, tmp_path):
    """On a checkpoint saved from *ForMaskedLM (mBERT, XLM-R), the language model starts
    from the checkpoint's own MLM head, bit for bit, and the default recipe skips warm-up."""
    from safetensors.torch import load_file

    from tests.reference_sft import save_checkpoint
    from trainer.jobs import Base

    ckpt = save_checkpoint(tmp_path / arch, arch, "mlm")
    b = Base.load(str(ckpt))
    stored = load_file(ckpt / "model.safetensors")
    text = [" ".join(["john lives in paris and mary visited london"] * 3)] * 40
    res = train_language_diff(b, "en", text, recipe=recipe(k=200), out_dir=tmp_path / "work")
    head = {n: t for n, t in res.trainer.reference.items() if not n.startswith(res.model.base_model_prefix + ".")}
    from_checkpoint = [n for n in head if n in stored]
    assert from_checkpoint  # the head transform and bias
    for name in from_checkpoint:
        assert torch.equal(head[name], stored[name]), name
    assert res.diff.meta.recipe["mlm_head"] == "pretrained" and res.diff.meta.recipe["head_warmup_steps"] == 0


@pytest.mark.slow
def test_lean_phase_two_equals_the_dense_reference_bit_for_bit(base, tmp_path, monkeypatch):
    """Without weight decay, phase 2 keeps theta_ref only at the K selected entries, adds
    the L1 term there only and copies nothing back. Same weights, same diff, as keeping
    the dense theta_ref and re-imposing it after every step."""
    from trainer import lt_sft

    assert lt_sft.frozen_entries_stay_put("adamw_torch_fused", 0.0)
    assert not lt_sft.frozen_entries_stay_put("adamw_torch_fused", 0.01)  # decay moves every entry
    assert not lt_sft.frozen_entries_stay_put("adafactor", 0.0)  # not known to leave them exactly
    r = recipe(k=300, weight_decay=0.0, full_l1_reg=0.5, sparse_l1_reg=0.5, head_warmup=PhaseLength(max_steps=0))
    text = lines(64)
    lean = train_language_diff(base, "en", text, recipe=r, out_dir=tmp_path / "lean")
    monkeypatch.setattr(lt_sft, "frozen_entries_stay_put", lambda *a: False)
    dense = train_language_diff(base, "en", text, recipe=r, out_dir=tmp_path / "dense")
    assert isinstance(lean.trainer.reference, lt_sft.SelectedReference) and isinstance(dense.trainer.reference, dict)
    assert sum(v.numel() for v in lean.trainer.reference.values.values()) == 300  # K values, not the tensors
    assert lean.trainer.l1_last > 0  # the L1 term was active in phase 2
    for (name, p), (_, q) in zip(lean.model.named_parameters(), dense.model.named_parameters()):
        assert torch.equal(p, q), name
    theta0 = {"bert." + n: p for n, p in base.model.named_parameters()}
    for name, mask in lean.trainer.masks.items():  # frozen entries never moved
        assert torch.equal(lean.trainer.trainable[name].detach()[~mask], theta0[name][~mask]), name
    assert lean.diff.nnz == dense.diff.nnz
    for name, t in dense.diff.sparse.items():
        assert torch.equal(lean.diff.sparse[name].indices, t.indices) and torch.equal(lean.diff.sparse[name].values, t.values)
