"""How the engine prices a switch for the scheduler (``Engine._switch_cost``): entries
written by the diffs that change, a diff not planned yet counting ``COLD_FACTOR`` times.

The real app in-process with prewarming off, so what is planned is exactly what requests
planned."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.engine import COLD_FACTOR
from tests.support import TOKEN, post_diff


@pytest.fixture()
def engine(tiny_base_dir, tiny_diffs, tmp_path):
    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", admin_token=TOKEN, device="cpu",
                        prewarm=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for data in tiny_diffs.values():
            assert post_diff(client, data).status_code == 201
        engine = client.app.state.engine
        engine.client = client
        yield engine


def predict(engine, language: str, task: str) -> None:
    r = engine.client.post("/v1/predict", json={"language": language, "task": task, "inputs": ["john went to lagos"]})
    assert r.status_code == 200, r.text


def test_unplanned_diffs_cost_cold_factor_times_their_entries(engine):
    comp = engine._lookup("hau", "ner")
    assert not any(i in engine.plans for i in comp.key)
    expected = COLD_FACTOR * (comp.language.nnz + comp.task.nnz)
    assert engine._switch_cost(None, comp.key) == pytest.approx(expected)


def test_planned_diffs_cost_their_layers_and_staying_costs_nothing(engine):
    predict(engine, "hau", "ner")
    comp = engine._lookup("hau", "ner")
    layers = [engine.plans.peek(i) for i in comp.key]
    assert all(layer is not None for layer in layers)
    assert engine._switch_cost(None, comp.key) == sum(layer.nnz for layer in layers)
    assert engine._switch_cost(comp.key, comp.key) == 0


def test_only_the_diffs_that_change_are_priced(engine):
    predict(engine, "hau", "ner")
    predict(engine, "swa", "pos")
    applied = engine._lookup("hau", "ner").key
    hau, ner = (engine.plans.peek(i).nnz for i in applied)
    swa_pos = engine._lookup("swa", "pos").key
    swa, pos = (engine.plans.peek(i).nnz for i in swa_pos)
    hau_pos = engine._lookup("hau", "pos").key
    # Task only: undo ner, write pos; the language layer stays.
    assert engine._switch_cost(applied, hau_pos) == ner + pos
    # Both: all four layers are written.
    assert engine._switch_cost(applied, swa_pos) == hau + ner + swa + pos
    # Back to the bare base: what is undone.
    assert engine._switch_cost(applied, (None, None)) == hau + ner
    # The task alone on the bare base: only the language layer is undone.
    assert engine._switch_cost(applied, (None, applied[1])) == hau


def test_a_cold_diff_costs_more_than_the_same_diff_planned(engine):
    predict(engine, "hau", "ner")
    applied = engine._lookup("hau", "ner").key
    cold = engine._lookup("yor", "ner").key  # yor never planned
    yor = engine._lookup("yor", "ner").language
    hau = engine.plans.peek(applied[0]).nnz
    assert yor.id not in engine.plans
    assert engine._switch_cost(applied, cold) == pytest.approx(hau + COLD_FACTOR * yor.nnz)
    predict(engine, "yor", "ner")
    assert engine._switch_cost(applied, cold) == hau + engine.plans.peek(yor.id).nnz
    assert engine._switch_cost(applied, cold) < hau + COLD_FACTOR * yor.nnz
