"""LT-SFT trainer: mask selection, phase-2 freezing, L1, diff extraction, jobs, CLI.

Tiny BERT (tests/support.make_base_dir), synthetic data, CPU, a few seconds each.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffs_store.base import base_params
from diffs_store.compose import composed_state_dict
from diffs_store.format import parse_diff
from diffs_store.heads import head_tensors
from diffs_store.merge import build_composed_model
from diffs_store.metadata import DiffKind, TaskType
from diffs_store.validate import validate_diff_bytes
from service.model_host import ModelHost
from service.patcher import Patcher, PlanCache
from tests.support import WORDS, make_base_dir, random_diff
from trainer import lt_sft
from trainer.data.classification import ClassificationExample
from trainer.data.conll import TaggedSentence
from trainer.jobs import Base, Source, train_language_diff, train_task_diff
from trainer.recipe import PhaseLength, Recipe, default_k, language_recipe, resolve_k, task_recipe

PLAIN = [w for w in WORDS if not w.startswith("##")]
PER, LOC = {"john", "mary"}, {"paris", "london", "kano", "lagos", "nairobi", "abuja"}


def tag(word: str) -> str:
    return "B-PER" if word in PER else "B-LOC" if word in LOC else "O"


def sentences(n: int, seed: int = 0) -> list[TaggedSentence]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = tuple(rng.choice(PLAIN) for _ in range(rng.randint(3, 10)))
        out.append(TaggedSentence(words, tuple(tag(w) for w in words)))
    return out


def lines(n: int, seed: int = 0) -> list[str]:
    return [" ".join(s.words) for s in sentences(n, seed)]


def recipe(**kw) -> Recipe:
    base = dict(
        k=400, full=PhaseLength(max_steps=8), sparse=PhaseLength(max_steps=8), batch_size=8,
        learning_rate=2e-3, weight_decay=0.1, logging_steps=100, max_seq_len=32,
    )
    base.update(kw)
    return Recipe(**base)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return make_base_dir(tmp_path_factory.mktemp("trainer-base") / "tiny-bert")


@pytest.fixture(scope="module")
def base(base_dir) -> Base:
    b = Base.load(str(base_dir))
    assert b.tokenizer.tokenize("john lives in paris") == ["john", "lives", "in", "paris"]
    return b


@pytest.fixture(scope="module")
def lang_diff(base, tmp_path_factory):
    """A trained English-like language diff (file bytes and parsed), reused by task tests."""
    out = tmp_path_factory.mktemp("lang")
    res = train_language_diff(
        base, "en", lines(64), recipe=recipe(k=300), out_dir=out / "work", output=out / "en.safetensors",
        dev_lines=lines(8, seed=9),
    )
    return res, (out / "en.safetensors").read_bytes()


def maskable_theta0(base: Base, prefix: str = "bert.") -> dict[str, torch.Tensor]:
    return {prefix + n: p.detach() for n, p in base.model.named_parameters()}


# -- pure LT-SFT rules ---------------------------------------------------------------------


def test_select_mask_is_one_global_top_k_with_exact_ties():
    ref = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    cur = {"a": torch.tensor([[0.1, 5.0, 0.2], [3.0, 0.0, 0.0]]), "b": torch.tensor([4.0, -6.0, 0.5, 0.5])}
    masks = lt_sft.select_mask(cur, ref, 4)
    # Global: the four largest |delta| are 6, 5, 4, 3, spread over both tensors (not 2 + 2).
    assert masks["a"].tolist() == [[False, True, False], [True, False, False]]
    assert masks["b"].tolist() == [True, True, False, False]
    # Ties at the threshold (0.5, 0.5) are taken in order until exactly K: the first one.
    masks = lt_sft.select_mask(cur, ref, 5)
    assert sum(int(m.sum()) for m in masks.values()) == 5
    assert masks["b"].tolist() == [True, True, True, False]
    # K beyond the moved entries: zero-delta ties fill up in parameter, then index order.
    masks = lt_sft.select_mask(cur, ref, 9)
    assert masks["a"].tolist() == [[True, True, True], [True, True, False]]
    assert int(masks["b"].sum()) == 4
    with pytest.raises(ValueError):
        lt_sft.select_mask(cur, ref, 11)


def test_k_count_proportion_and_reference_defaults():
    assert default_k("language", 768) == 7_667_712
    assert default_k("task", 768) == 14_155_776
    assert resolve_k(1000, 5000, kind="task", hidden_size=16) == 1000
    assert resolve_k(0.1, 5000, kind="task", hidden_size=16) == 500
    assert resolve_k(1e3, 5000, kind="task", hidden_size=16) == 1000  # integral float = a count
    with pytest.raises(ValueError):
        resolve_k(6000, 5000, kind="task", hidden_size=16)
    lang = language_recipe()
    assert (lang.full.epochs, lang.full.min_steps, lang.full.max_steps) == (100, 10_000, 100_000)
    assert (lang.full_l1_reg, lang.sparse_l1_reg, lang.batch_size, lang.learning_rate) == (0.1, 0.1, 8, 5e-5)
    ner = task_recipe(TaskType.TOKEN_CLASSIFICATION)
    assert (ner.full.epochs, ner.sparse.epochs, ner.full_l1_reg) == (3, 10, 0.0)
    assert task_recipe(TaskType.SEQUENCE_CLASSIFICATION).learning_rate == 2e-5


def test_phase_length_epochs_with_step_clamps():
    assert PhaseLength(epochs=2).steps(100, 8) == 25
    assert PhaseLength(epochs=100, min_steps=10, max_steps=50).steps(100, 8) == 50
    assert PhaseLength(epochs=1, min_steps=30, max_steps=50).steps(100, 8) == 30
    assert PhaseLength(max_steps=7).steps(100, 8) == 7
    assert PhaseLength(epochs=1).steps(100, 8, grad_accum=2, world_size=2) == 4


def test_l1_gradient_matches_autograd_of_the_reference_formula():
    torch.manual_seed(0)
    p = {"w": torch.nn.Parameter(torch.randn(5, 4))}
    ref = {"w": p["w"].detach().clone()}
    ref["w"][0, 0] = p["w"][0, 0].item()  # an entry with p == p0: zero gradient, as autograd's abs
    with torch.no_grad():
        p["w"][1:] += 0.3
    lam, accum, n_total = 0.1, 2, 37
    loss = lam * accum * (p["w"] - ref["w"]).abs().sum() / n_total
    (expected,) = torch.autograd.grad(loss, [p["w"]])
    lt_sft.add_l1_gradient(p, ref, lam * accum, n_total)
    torch.testing.assert_close(p["w"].grad, expected)


# -- jobs ------------------------------------------------------------------------------------


def test_language_diff_exactly_k_frozen_bit_identical_heads_dense_file_valid(base, lang_diff):
    res, data = lang_diff
    model, trainer = res.model, res.trainer
    theta0 = maskable_theta0(base)
    maskable = trainer.maskable
    changed = sum(int((p.detach() != theta0[n]).sum()) for n, p in maskable.items())
    assert changed == 300 == res.diff.nnz  # exactly K entries moved, all stored
    assert res.diff.meta.recipe["k_resolved"] == 300
    for name, p in maskable.items():  # frozen entries: bit-identical to theta0 (weight decay on)
        frozen = ~trainer.masks[name]
        assert torch.equal(p.detach()[frozen], theta0[name][frozen]), name
    for name, p in model.named_parameters():  # LayerNorm never trains in the encoder
        if name.startswith("bert.") and "LayerNorm" in name:
            assert torch.equal(p.detach(), theta0[name])
    decoder = model.get_output_embeddings().weight
    assert decoder is not model.get_input_embeddings().weight and not decoder.requires_grad
    assert torch.equal(decoder, theta0["bert.embeddings.word_embeddings.weight"])  # untied, frozen at theta0
    # Heads are dense (full tensors, absolute values); the frozen decoder is theta0's input
    # embeddings, recorded as such, and the decoder bias is tied to the head bias: not stored.
    state = model.state_dict()
    recorded = {"cls.predictions.decoder.weight": "embeddings.word_embeddings.weight"}
    assert res.diff.meta.head_from_base == recorded
    assert set(res.diff.dense) == {n for n in state if n.startswith("cls.")} - {*recorded, "cls.predictions.decoder.bias"}
    for name, t in res.diff.dense.items():
        assert torch.equal(t, state[name])
    payload = res.diff.nnz * 8 + sum(t.numel() * t.element_size() for t in res.diff.dense.values())
    header = 8 + int.from_bytes(data[:8], "little")
    assert len(data) - header <= 1.1 * payload  # the sparse part plus the trained head, nothing else
    diff = validate_diff_bytes(data, base.spec)
    meta = diff.meta
    assert (meta.kind, meta.language, meta.task_type) == (DiffKind.LANGUAGE, "en", TaskType.FILL_MASK)
    assert meta.base_fingerprint == base.spec.fingerprint
    assert meta.recipe["method"] == "lt-sft" and meta.recipe["weight_decay"] == 0.1
    assert meta.metrics["train"]["sparse"]["steps"] == 8 and "mlm_loss" in meta.metrics["dev"]
    # Fill-mask through the service's composition reproduces the trained model.
    composed = build_composed_model(base.model, base.spec, [diff])
    enc = base.tokenizer(lines(4, seed=3), padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**enc).logits
        torch.testing.assert_close(composed(**enc).logits, expected, rtol=0, atol=1e-5)
        # The service: the live encoder patched in place; the decoder is theta0's embeddings
        # whether they come from the pristine copy or are rebuilt from the saved originals.
        host = ModelHost(base.name)
        for pristine in (None, {k: v.detach().clone() for k, v in host.params.items()}):
            patcher = Patcher(host.params, PlanCache(1 << 30), pristine)
            patcher.activate(("lang", None), lambda _id: diff)
            served = host.build_task_model(TaskType.FILL_MASK, (), head_tensors(diff, patcher.pristine_tensor))
            torch.testing.assert_close(served(**enc).logits, expected, rtol=0, atol=1e-5)
            patcher.restore()


@pytest.mark.slow
def test_without_reimposing_weight_decay_moves_frozen_entries(base, tmp_path, monkeypatch):
    """The negative control: gradient masking alone lets AdamW's weight decay move frozen
    entries; re-imposing theta_ref after each step is what keeps them bit-identical."""
    monkeypatch.setattr(lt_sft, "reimpose_frozen", lambda *a, **k: None)
    res = train_task_diff(
        base, "ner", TaskType.TOKEN_CLASSIFICATION, [Source("en", sentences(32))],
        recipe=recipe(full=PhaseLength(max_steps=2), sparse=PhaseLength(max_steps=4)), out_dir=tmp_path,
    )
    theta0 = maskable_theta0(base)
    moved = sum(int((p.detach() != theta0[n])[~res.trainer.masks[n]].sum()) for n, p in res.trainer.maskable.items())
    assert moved > 0


@pytest.mark.slow
def test_task_diff_is_relative_to_base_plus_source_language_diff(base, lang_diff, tmp_path):
    lang_res, lang_bytes = lang_diff
    lang = parse_diff(lang_bytes)
    res = train_task_diff(
        base, "ner", TaskType.TOKEN_CLASSIFICATION, [Source("en", sentences(48), lang, "lang-id", dev=sentences(8, 5))],
        recipe=recipe(), out_dir=tmp_path / "work", output=tmp_path / "ner.safetensors",
    )
    # theta_ref = theta0 + language diff (the service's composition), and the diff is taken from it.
    composed = composed_state_dict(base_params(base.model), [lang])
    for name, ref in res.trainer.reference.items():
        if name.startswith("bert."):
            assert torch.equal(ref, composed[name[5:]]), name
    final = dict(res.model.named_parameters())
    for name, part in res.diff.sparse.items():
        delta = (final["bert." + name].detach() - composed[name]).view(-1)[part.indices]
        assert torch.equal(part.values, delta)
    assert res.diff.nnz == 400
    assert set(res.diff.dense) == {"classifier.weight", "classifier.bias"}
    task = validate_diff_bytes((tmp_path / "ner.safetensors").read_bytes(), base.spec)
    assert task.meta.labels == ("O", "B-LOC", "B-PER") and task.meta.language == "en"
    assert task.meta.recipe["relative_to"] == "theta0 + source-language diff"
    assert task.meta.recipe["sources"][0]["language_diff"] == "lang-id"
    assert "f1" in task.meta.metrics["dev"]["en"]
    # base + language diff + task diff, composed by the service's code, = the trained model.
    enc = base.tokenizer([list(s.words) for s in sentences(4, 7)], is_split_into_words=True, padding=True, return_tensors="pt")
    res.model.eval()
    with torch.no_grad():
        trained = res.model(**enc).logits
        both = build_composed_model(base.model, base.spec, [lang, task])(**enc).logits
        alone = build_composed_model(base.model, base.spec, [task])(**enc).logits
    torch.testing.assert_close(both, trained, rtol=0, atol=1e-5)
    assert (alone - trained).abs().max() > 1e-4  # the language diff matters


@pytest.mark.slow
def test_l1_lowers_total_delta(base, tmp_path):
    def total(l1: float) -> float:
        res = train_task_diff(
            base, "ner", TaskType.TOKEN_CLASSIFICATION, [Source("en", sentences(48))],
            recipe=recipe(full_l1_reg=l1, sparse_l1_reg=l1, weight_decay=0.0), out_dir=tmp_path / str(l1),
        )
        return sum(float(p.values.abs().sum()) for p in res.diff.sparse.values())

    assert total(2000.0) < 0.9 * total(0.0)


@pytest.mark.slow
def test_multisource_leaves_no_language_diff_applied(base, tmp_path, monkeypatch):
    from trainer import multisource

    hau = random_diff(base.model, base.spec, DiffKind.LANGUAGE, language="hau", density=0.3, seed=11, with_head=False)
    swa = random_diff(base.model, base.spec, DiffKind.LANGUAGE, language="swa", density=0.3, seed=12, with_head=False)
    seen: list[str] = []
    original_call = multisource.LanguageSwitch.__call__

    def spy(self, source):
        seen.append(source)
        return original_call(self, source)

    monkeypatch.setattr(multisource.LanguageSwitch, "__call__", spy)
    res = train_task_diff(
        base, "ner", TaskType.TOKEN_CLASSIFICATION,
        [Source("hau", sentences(24, 1), hau), Source("swa", sentences(24, 2), swa)],
        recipe=recipe(), out_dir=tmp_path / "work", output=tmp_path / "ms.safetensors",
    )
    assert set(seen) == {"hau", "swa"} and len(seen) == 16  # one switch per batch, both phases
    theta0 = maskable_theta0(base)
    for name, p in res.model.named_parameters():
        if not name.startswith("bert."):
            continue
        if name in res.trainer.masks:  # unselected entries: theta0 exactly, no language delta left
            frozen = ~res.trainer.masks[name]
            assert torch.equal(p.detach()[frozen], theta0[name][frozen]), name
            delta = (p.detach() - theta0[name]).view(-1)
            part = res.diff.sparse.get(name[5:])
            stored = torch.zeros_like(delta)
            if part is not None:
                stored[part.indices] = part.values
            assert torch.equal(delta, stored)  # the diff is relative to theta0
        else:
            assert torch.equal(p.detach(), theta0[name]), name
    meta = validate_diff_bytes((tmp_path / "ms.safetensors").read_bytes(), base.spec).meta
    assert meta.language is None and meta.recipe["multi_source"] and meta.recipe["relative_to"] == "theta0"


@pytest.mark.slow
def test_sequence_classification_task_diff(base, tmp_path):
    from trainer.evaluate import evaluate_model

    rng = random.Random(3)
    examples = []
    for _ in range(48):
        words = [rng.choice(PLAIN) for _ in range(6)]
        examples.append(ClassificationExample(" ".join(words), "loc" if set(words) & LOC else "none"))
    res = train_task_diff(
        base, "topic", TaskType.SEQUENCE_CLASSIFICATION, [Source("en", examples, dev=examples[:16])],
        recipe=recipe(), out_dir=tmp_path / "w", output=tmp_path / "cls.safetensors",
    )
    diff = validate_diff_bytes((tmp_path / "cls.safetensors").read_bytes(), base.spec)
    assert diff.meta.labels == ("loc", "none") and "pooler.dense.weight" in base.spec.param_shapes
    composed = build_composed_model(base.model, base.spec, [diff])
    assert evaluate_model(composed, base.tokenizer, TaskType.SEQUENCE_CLASSIFICATION, examples[:16]) == res.metrics["dev"]["en"]


@pytest.mark.slow
def test_resume_after_phase_one_reuses_the_saved_mask(base, tmp_path):
    r = recipe()
    first = train_task_diff(base, "ner", TaskType.TOKEN_CLASSIFICATION, [Source("en", sentences(32))], recipe=r, out_dir=tmp_path)
    assert (tmp_path / "mask.safetensors").exists()
    again = train_task_diff(base, "ner", TaskType.TOKEN_CLASSIFICATION, [Source("en", sentences(32))], recipe=r, out_dir=tmp_path)
    for name, m in first.trainer.masks.items():
        assert torch.equal(m, again.trainer.masks[name])
    assert again.diff.meta.metrics["train"]["full"] == first.diff.meta.metrics["train"]["full"]


@pytest.mark.slow
def test_resume_from_a_phase_two_checkpoint_matches_an_uninterrupted_run(base, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    from trainer import hf

    r = recipe(save_steps=2)
    data = [Source("en", sentences(32))]
    whole = train_task_diff(base, "ner", TaskType.TOKEN_CLASSIFICATION, data, recipe=r, out_dir=tmp_path / "whole")

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if args.output_dir.endswith("phase2") and state.global_step == 5:
                raise KeyboardInterrupt

    original_init = hf.LtSftTrainer.__init__

    def init(self, *a, **k):
        original_init(self, *a, **k)
        self.add_callback(Crash())

    monkeypatch.setattr(hf.LtSftTrainer, "__init__", init)
    with pytest.raises(KeyboardInterrupt):
        train_task_diff(base, "ner", TaskType.TOKEN_CLASSIFICATION, data, recipe=r, out_dir=tmp_path / "crashed")
    monkeypatch.setattr(hf.LtSftTrainer, "__init__", original_init)
    resumed = train_task_diff(base, "ner", TaskType.TOKEN_CLASSIFICATION, data, recipe=r, out_dir=tmp_path / "crashed")
    assert resumed.trainer.state.global_step == 8
    assert resumed.diff.sparse.keys() == whole.diff.sparse.keys()
    for name, part in whole.diff.sparse.items():
        assert torch.equal(part.indices, resumed.diff.sparse[name].indices)
        torch.testing.assert_close(part.values, resumed.diff.sparse[name].values, rtol=0, atol=1e-6)
    for name, t in whole.diff.dense.items():
        torch.testing.assert_close(t, resumed.diff.dense[name], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_question_answering_task_diff(base, tmp_path):
    from trainer.data.squad import QAExample
    from trainer.evaluate import evaluate_model

    ctx = "john lives in paris and mary works in london"
    pairs = [("where john lives", "paris"), ("who works in london", "mary")] * 8
    examples = [QAExample(f"q{i}", q, ctx, ((a, ctx.index(a)),)) for i, (q, a) in enumerate(pairs)]
    res = train_task_diff(
        base, "qa", TaskType.QUESTION_ANSWERING, [Source("en", examples, dev=examples[:2])],
        recipe=recipe(), out_dir=tmp_path / "w", output=tmp_path / "qa.safetensors",
    )
    diff = validate_diff_bytes((tmp_path / "qa.safetensors").read_bytes(), base.spec)
    assert diff.meta.labels == () and set(diff.dense) == {"qa_outputs.weight", "qa_outputs.bias"}
    composed = build_composed_model(base.model, base.spec, [diff])
    scores = evaluate_model(composed, base.tokenizer, TaskType.QUESTION_ANSWERING, examples[:2])
    assert scores == res.metrics["dev"]["en"] and set(scores) == {"exact_match", "f1"}


# -- readers -----------------------------------------------------------------------------


def test_readers(tmp_path):
    from trainer.data import read_classification, read_conll, read_conllu, read_lines, read_squad

    (tmp_path / "m.txt").write_text("Hukumar B-ORG\nwasan I-ORG\n\nKano B-LOC\n.\tO\n\n\n")
    assert [s.tags for s in read_conll(tmp_path / "m.txt")] == [("B-ORG", "I-ORG"), ("B-LOC", "O")]
    (tmp_path / "c.txt").write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    assert read_conll(tmp_path / "c.txt")[0] == TaggedSentence(("EU", "rejects"), ("B-ORG", "O"))
    assert read_conll(tmp_path / "c.txt", tag_column=1)[0].tags == ("NNP", "VBZ")
    (tmp_path / "u.conllu").write_text(
        "# sent_id = 1\n1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n1\tdo\tdo\tAUX\t_\t_\t0\troot\t_\t_\n"
        "2\tn't\tnot\tPART\t_\t_\t1\tadvmod\t_\t_\n\n"
    )
    assert read_conllu(tmp_path / "u.conllu")[0] == TaggedSentence(("do", "n't"), ("AUX", "PART"))
    (tmp_path / "t.txt").write_text("one line\n\n  two  \n")
    assert read_lines(tmp_path / "t.txt") == ["one line", "two"]
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "a", "text_pair": "b", "label": 1}) + "\n")
    (tmp_path / "d.tsv").write_text("text\tlabel\nhello\tpos\n")
    assert read_classification(tmp_path / "d.jsonl")[0] == ClassificationExample("a", "1", "b")
    assert read_classification(tmp_path / "d.tsv")[0] == ClassificationExample("hello", "pos")
    squad = {"data": [{"paragraphs": [{"context": "john lives in paris", "qas": [
        {"id": "q1", "question": "where does john live", "answers": [{"text": "paris", "answer_start": 14}]}]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(squad))
    examples = read_squad(tmp_path / "s.json")
    assert examples[0].answers == (("paris", 14),)


def test_qa_features_point_at_the_answer(base):
    from trainer.data.squad import QAExample, qa_train_features

    tok = base.tokenizer
    ex = QAExample("q1", "where does john live", "john lives in paris", (("paris", 14),))
    feat = qa_train_features(tok, [ex], max_len=32)[0]
    span = feat["input_ids"][feat["start_positions"] : feat["end_positions"] + 1]
    assert tok.decode(span) == "paris"


# -- CLI ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_eval_and_push(base_dir, tmp_path, monkeypatch):
    from diffs_store.base import quiet_transformers
    from trainer import cli

    runner = CliRunner()
    app = __import__("typer").Typer()
    app.callback()(quiet_transformers)  # as the root csft app does
    app.add_typer(cli.train_app, name="train")
    app.command("eval")(cli.eval_cmd)
    (tmp_path / "en.txt").write_text("\n".join(lines(40)) + "\n")
    conll = "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(s.words, s.tags)) for s in sentences(40)) + "\n"
    (tmp_path / "train.txt").write_text(conll)
    steps = ["--full-max-steps", "4", "--sparse-max-steps", "4", "--batch-size", "8", "--max-seq-len", "32"]
    r = runner.invoke(app, ["train", "language", "--base", str(base_dir), "--language", "en", "--train",
                            str(tmp_path / "en.txt"), "--k", "200", "-o", str(tmp_path / "en.safetensors"), *steps])
    assert r.exit_code == 0, r.output
    posted = {}

    class Resp:
        status_code = 201

        def json(self):
            return {"id": "abc"}

    def fake_post(url, files, headers, timeout):
        posted.update(url=url, name=files["file"][0], size=len(files["file"][1]), auth=headers["Authorization"])
        return Resp()

    monkeypatch.setattr("httpx.post", fake_post)
    r = runner.invoke(app, ["train", "task", "--base", str(base_dir), "--task", "ner", "--train",
                            f"en={tmp_path / 'train.txt'}", "--language-diff", str(tmp_path / "en.safetensors"),
                            "--k", "0.05", "-o", str(tmp_path / "ner.safetensors"), *steps,
                            "--push", "http://svc:8000/", "--token", "T"])
    assert r.exit_code == 0, r.output
    assert posted == {"url": "http://svc:8000/v1/admin/diffs", "name": "ner.safetensors",
                      "size": (tmp_path / "ner.safetensors").stat().st_size, "auth": "Bearer T"}
    meta = parse_diff((tmp_path / "ner.safetensors").read_bytes()).meta
    assert meta.recipe["sources"][0]["language_diff"] is not None and meta.language == "en"
    r = runner.invoke(app, ["eval", "--base", str(base_dir), "--task-diff", str(tmp_path / "ner.safetensors"),
                            "--language-diff", str(tmp_path / "en.safetensors"), "--data", str(tmp_path / "train.txt")])
    assert r.exit_code == 0, r.output
    scores = json.loads(r.stdout.strip().splitlines()[-1])
    assert scores["examples"] == 40 and 0.0 <= scores["f1"] <= 1.0
    # Failures: non-zero exit, one line on stderr.
    r = runner.invoke(app, ["train", "task", "--base", str(base_dir), "--task", "ner", "--train",
                            str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")
    r = runner.invoke(app, ["eval", "--base", str(base_dir), "--task-diff", str(tmp_path / "en.safetensors"),
                            "--data", str(tmp_path / "train.txt")])
    assert r.exit_code == 2 and "language diff" in r.stderr
