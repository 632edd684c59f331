"""bf16 autocast training (``recipe.precision``): it trains, and LT-SFT's rules hold as in
fp32 - master weights, theta_ref, the global top-K over |theta1 - theta0|, the frozen
entries and the diff are fp32; only the forward/backward arithmetic is bf16.

Tiny BERT without an MLM head, synthetic text, CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from diffs_store.format import parse_diff
from diffs_store.metadata import TaskType
from diffs_store.validate import validate_diff_bytes
from tests.test_trainer import base, base_dir, lines, maskable_theta0, recipe  # noqa: F401  (module fixtures)
from trainer import lt_sft
from trainer.jobs import mlm_dev_loss, train_language_diff
from trainer.models import build_model, cast_once_frozen_decoder, untie_and_freeze_decoder
from trainer.recipe import PhaseLength, Recipe

K = 300
# Text with structure an MLM can learn in a few steps (random words have none beyond unigrams).
PHRASES = ["john lives in paris and mary visited london", "mary lives in kano and john visited lagos",
           "john visited nairobi and mary lives in abuja"]


def text(n: int) -> list[str]:
    return [PHRASES[i % len(PHRASES)] for i in range(n)]


def _train(base, tmp_path, monkeypatch, precision: str):
    """A language diff with the language recipe's L1 and no weight decay (the reference
    path: lean phase 2), recording what the selection saw and the Linear outputs' dtypes."""
    seen: dict = {"train": set(), "eval": set()}
    real = lt_sft.select_mask

    def spy(current, reference, k):
        seen["current"] = {n: t.detach().clone() for n, t in current.items()}
        seen["reference"] = {n: t.detach().clone() for n, t in reference.items()}
        return real(current, reference, k)

    def record(module, _inputs, output):
        if isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            seen["train" if torch.is_grad_enabled() else "eval"].add(output.dtype)

    monkeypatch.setattr(lt_sft, "select_mask", spy)
    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        r = recipe(k=K, weight_decay=0.0, full_l1_reg=0.1, sparse_l1_reg=0.1, precision=precision,
                   head_warmup=PhaseLength(max_steps=20), head_warmup_lr=1e-2,
                   full=PhaseLength(max_steps=12), sparse=PhaseLength(max_steps=12), learning_rate=5e-3)
        out = tmp_path / precision
        res = train_language_diff(base, "en", text(96), recipe=r, out_dir=out / "work",
                                  dev_lines=text(24), output=out / "en.safetensors")
    finally:
        handle.remove()
    return res, (out / "en.safetensors").read_bytes(), seen


@pytest.fixture(scope="module")
def runs(base, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        root = tmp_path_factory.mktemp("precision")
        return {p: _train(base, root, mp, p) for p in ("fp32", "bf16")}
    finally:
        mp.undo()


def test_bf16_runs_forward_in_bf16_and_evaluates_in_fp32(runs):
    assert runs["fp32"][2]["train"] == {torch.float32}
    assert torch.bfloat16 in runs["bf16"][2]["train"]  # autocast really on while training
    assert runs["bf16"][2]["eval"] == {torch.float32}  # dev loss: plain fp32


def test_bf16_selection_is_the_global_top_k_of_fp32_master_weights(base, runs):
    res, _, seen = runs["bf16"]
    theta0 = maskable_theta0(base)
    assert all(t.dtype == torch.float32 for t in seen["current"].values())
    for name in seen["current"]:  # theta_ref of the maskable tensors is theta0, fp32
        ref = seen["reference"][name]
        assert ref.dtype == torch.float32 and torch.equal(ref, theta0[name]), name
    delta = {n: (seen["current"][n] - seen["reference"][n]).abs() for n in seen["current"]}
    masks = res.trainer.masks
    chosen = torch.cat([delta[n][masks[n]] for n in delta])
    rest = torch.cat([delta[n][~masks[n]] for n in delta])
    assert chosen.numel() == K and float(chosen.min()) >= float(rest.max())  # one global top-K


def test_bf16_diff_moves_exactly_k_fp32_entries_and_freezes_the_rest(base, runs):
    res, data, _ = runs["bf16"]
    theta0 = maskable_theta0(base)
    changed = 0
    for name, p in res.trainer.maskable.items():
        assert p.dtype == torch.float32
        frozen = ~res.trainer.masks[name]
        assert torch.equal(p.detach()[frozen], theta0[name][frozen]), name  # bit-identical
        changed += int((p.detach() != theta0[name]).sum())
    assert changed == K == res.diff.nnz
    assert all(t.values.dtype == torch.float32 for t in res.diff.sparse.values())
    assert res.trainer.l1_last > 0  # the L1 pull towards theta0 ran in phase 2
    # Lean: the sparse part (8 bytes an entry) plus the trained head, nothing else.
    payload = res.diff.nnz * 8 + sum(t.numel() * t.element_size() for t in res.diff.dense.values())
    header = 8 + int.from_bytes(data[:8], "little")
    assert len(data) - header <= 1.1 * payload
    meta = validate_diff_bytes(data, base.spec).meta
    assert meta.recipe["precision"] == "bf16" and meta.head_from_base  # the decoder is theta0's, recorded


def test_bf16_trains_as_well_as_fp32(base, runs):
    fresh, _ = build_model(base.model, base.spec, TaskType.FILL_MASK, seed=42)
    untie_and_freeze_decoder(fresh)
    from trainer.data.encode import encode_mlm

    dev = encode_mlm(base.tokenizer, text(24), 32, packed=True)
    before = mlm_dev_loss(fresh, base.tokenizer, dev, Recipe(max_seq_len=32))["mlm_loss"]
    after = {p: runs[p][0].metrics["dev"]["mlm_loss"] for p in runs}
    assert after["bf16"] < before - 0.2  # it learned (4.12 -> 3.86 here, in both precisions)
    assert abs(after["bf16"] - after["fp32"]) < 0.02 * after["fp32"]  # as much as fp32
    overlap = sum(int((runs["bf16"][0].trainer.masks[n] & runs["fp32"][0].trainer.masks[n]).sum())
                  for n in runs["fp32"][0].trainer.masks)
    assert overlap > K // 2  # mostly the same entries selected


def test_cast_once_decoder_equals_autocast_and_leaves_no_trace(base):
    model, _ = build_model(base.model, base.spec, TaskType.FILL_MASK, seed=1)
    untie_and_freeze_decoder(model)
    decoder = model.get_output_embeddings()
    x = torch.randn(5, decoder.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = decoder(x)
        with cast_once_frozen_decoder(model, torch.bfloat16):
            got = decoder(x)
            plain = decoder(x).float()
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    assert "forward" not in vars(decoder)  # restored
    with cast_once_frozen_decoder(model, torch.bfloat16):  # outside autocast: the fp32 layer
        assert torch.equal(decoder(x), nn.functional.linear(x, decoder.weight, decoder.bias))
    assert torch.equal(plain, expected.float())


def test_unknown_precision_is_refused_and_cli_defaults_for_a_headless_base(base_dir, tmp_path):
    with pytest.raises(ValueError, match="precision 'fp16'"):
        Recipe(precision="fp16")
    from trainer import cli

    app = __import__("typer").Typer()
    app.callback()(lambda: None)
    app.add_typer(cli.train_app, name="train")
    (tmp_path / "en.txt").write_text("\n".join(lines(40)) + "\n")
    args = ["train", "language", "--base", str(base_dir), "--language", "en", "--train", str(tmp_path / "en.txt"),
            "--k", "200", "--full-max-steps", "2", "--sparse-max-steps", "2", "--max-seq-len", "32"]
    bad = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "x.safetensors"), "--precision", "fp16"])
    assert bad.exit_code == 2 and "precision 'fp16'" in bad.output
    assert not (tmp_path / "x.safetensors").exists()
    ok = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "en.safetensors"), "--precision", "bf16"])
    assert ok.exit_code == 0, ok.output
    meta = parse_diff((tmp_path / "en.safetensors").read_bytes()).meta
    assert meta.recipe["precision"] == "bf16"
    # The tiny base has no MLM head: unset options take the headless recipe's values.
    assert meta.recipe["head_warmup_lr"] == 1e-3 and meta.recipe["learning_rate"] == 3e-4
    assert meta.recipe["full"]["max_steps"] == 2 and meta.recipe["head_warmup_steps"] == 2  # as long as phase 1


def test_language_defaults_follow_the_base_head():
    """A base with a pretrained MLM head keeps the reference recipe; one without gets the
    CPU-sized recipe chosen on dev signals (warm-up at 1e-3, 100 + 100 steps at 3e-4, blocks of 64)."""
    from trainer.recipe import NO_MLM_HEAD_LANGUAGE, language_recipe, language_recipe_for

    assert language_recipe_for(False) == language_recipe()
    fresh = language_recipe_for(True)
    assert fresh == language_recipe(**NO_MLM_HEAD_LANGUAGE)
    assert fresh.head_warmup_lr == 1e-3 and fresh.full.steps(10**6, 8) == 100 and fresh.max_seq_len == 64
    assert fresh.full_l1_reg == fresh.sparse_l1_reg == 0.1  # the reference's L1 either way
    assert fresh.learning_rate == 3e-4 and language_recipe_for(True, learning_rate=1e-4).learning_rate == 1e-4


def test_bf16_task_diff_trains_under_autocast_with_fp32_entries(base, tmp_path):
    from tests.test_trainer import sentences
    from trainer.jobs import Source, train_task_diff

    dtypes = set()
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, _i, out: dtypes.add(out.dtype) if isinstance(m, nn.Linear) and torch.is_grad_enabled() else None
    )
    try:
        res = train_task_diff(
            base, "ner", TaskType.TOKEN_CLASSIFICATION, [Source("en", sentences(48), dev=sentences(16, seed=5))],
            recipe=recipe(k=K, weight_decay=0.0, precision="bf16"), out_dir=tmp_path,
        )
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}  # the model's own forward (task path) ran under autocast
    theta0 = maskable_theta0(base)
    changed = sum(int((p.detach() != theta0[n]).sum()) for n, p in res.trainer.maskable.items())
    assert changed == K == res.diff.nnz and res.diff.meta.recipe["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    assert res.metrics["train"]["full"]["train_loss"] > 0 and "en" in res.metrics["dev"]
