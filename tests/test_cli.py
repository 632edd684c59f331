"""`csft diff ...` and `csft merge`: exit codes, one-line errors, and a loadable merged model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForTokenClassification, AutoTokenizer
from typer.testing import CliRunner

from diffs_store.base import load_base_model
from diffs_store.format import parse_diff
from diffs_store.merge import build_composed_model
from diffs_store.reference_import import export_reference
from tests.support import random_diff, tiny_base
from service.cli import app

runner = CliRunner()


@pytest.fixture()
def files(tmp_path, tiny_diffs):
    out = {}
    for (kind, key), data in tiny_diffs.items():
        path = tmp_path / f"{kind}-{key}.safetensors"
        path.write_bytes(data)
        out[key] = path
    return out


def test_inspect_prints_metadata_json(files):
    result = runner.invoke(app, ["diff", "inspect", str(files["ner"])])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["kind"] == "task" and meta["task"] == "ner" and len(meta["id"]) == 64


def test_validate_ok_and_refusals(files, tiny_base_dir, tmp_path):
    ok = runner.invoke(app, ["diff", "validate", str(files["hau"]), "--base", str(tiny_base_dir)])
    assert ok.exit_code == 0 and ok.stdout.startswith("ok:")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(files["hau"].read_bytes()[:-3])
    res = runner.invoke(app, ["diff", "validate", str(bad), "--base", str(tiny_base_dir)])
    assert res.exit_code == 1 and res.stderr.strip().count("\n") == 0 and "truncated" in res.stderr
    other_model, other_spec = tiny_base(seed=4)
    foreign = tmp_path / "foreign.safetensors"
    random_diff(other_model, other_spec).save(foreign)
    res = runner.invoke(app, ["diff", "validate", str(foreign), "--base", str(tiny_base_dir)])
    assert res.exit_code == 1 and "fingerprint_mismatch" in res.stderr
    res = runner.invoke(app, ["diff", "validate", str(tmp_path / "missing"), "--base", str(tiny_base_dir)])
    assert res.exit_code == 2 and "cannot read" in res.stderr


def test_import_csft_round_trip(files, tiny_base_dir, tmp_path):
    _, spec = load_base_model(str(tiny_base_dir))
    original = parse_diff(files["ner"].read_bytes())
    ref = tmp_path / "pytorch_diff.bin"
    ref.write_bytes(export_reference(original, "bert", spec.param_shapes))
    out = tmp_path / "imported.safetensors"
    labels = ",".join(original.meta.labels)
    res = runner.invoke(app, ["diff", "import-csft", str(tmp_path), "--base", str(tiny_base_dir), "--kind", "task",
                              "--task", "ner", "--task-type", "token-classification", "--labels", labels, "-o", str(out)])
    assert res.exit_code == 0, res.output
    imported = parse_diff(out.read_bytes())
    for name, part in original.sparse.items():
        assert torch.equal(imported.sparse[name].indices, part.indices)
        assert torch.equal(imported.sparse[name].values, part.values)
    res = runner.invoke(app, ["diff", "import-csft", str(ref), "--base", str(tiny_base_dir), "--kind", "adapter", "-o", str(out)])
    assert res.exit_code == 2


def test_merge_writes_a_loadable_model_with_the_pair_baked_in(files, tiny_base_dir, tmp_path):
    out = tmp_path / "merged"
    res = runner.invoke(app, ["merge", "--base", str(tiny_base_dir), "--language-diff", str(files["hau"]),
                              "--task-diff", str(files["ner"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label[1] == "B-PER"
    base, spec = load_base_model(str(tiny_base_dir))
    expected = build_composed_model(base, spec, [parse_diff(files["hau"].read_bytes()), parse_diff(files["ner"].read_bytes())])
    batch = tokenizer(["john went to lagos"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, expected(**batch).logits)

    lm_out = tmp_path / "lm"
    res = runner.invoke(app, ["merge", "--base", str(tiny_base_dir), "--language-diff", str(files["yor"]), "-o", str(lm_out)])
    assert res.exit_code == 0, res.output
    assert type(AutoModelForMaskedLM.from_pretrained(lm_out)).__name__ == "BertForMaskedLM"


def test_merge_refuses_swapped_kinds(files, tiny_base_dir, tmp_path):
    res = runner.invoke(app, ["merge", "--base", str(tiny_base_dir), "--language-diff", str(files["ner"]), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "task diff" in res.stderr and not (tmp_path / "x").exists()


def test_push_uploads_to_a_running_app_and_reports_refusals(files, tiny_base_dir, tmp_path, monkeypatch):
    """`csft diff push` against the real app (httpx routed into the ASGI app, real Redis)."""
    import httpx
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings

    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", admin_token="tok", device="cpu")
    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr(httpx, "post", lambda url, timeout=None, **kw: client.post(url.replace("http://svc", ""), **kw))
        res = runner.invoke(app, ["diff", "push", str(files["hau"]), "--url", "http://svc", "--token", "tok"])
        assert res.exit_code == 0, res.output
        assert "version 1" in res.stdout
        assert client.get("/v1/languages").json()["languages"] == ["hau"]
        res = runner.invoke(app, ["diff", "push", str(files["swa"]), "--url", "http://svc", "--token", "bad"])
        assert res.exit_code == 1 and "403" in res.stderr
        res = runner.invoke(app, ["diff", "push", str(files["swa"]), "--url", "http://svc"], env={"CSFT_ADMIN_TOKEN": ""})
        assert res.exit_code == 2
