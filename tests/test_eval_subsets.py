"""Honest evaluation subsets and the paired bootstrap of (b) - (a)."""

from __future__ import annotations

import random

import pytest

from trainer.evaluate import f1_from_counts, entity_counts, paired_bootstrap_f1, sample_subset, tagging_scores

TAGS = ("O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG")


def synthetic(n: int, seed: int = 0) -> list[list[str]]:
    """Random BIO sentences (invalid I- starts included, as real predictions have them)."""
    rng = random.Random(seed)
    return [[rng.choice(TAGS) for _ in range(rng.randint(3, 20))] for _ in range(n)]


def corrupt(gold: list[list[str]], p: float, seed: int) -> list[list[str]]:
    """A system that gets each tag right with probability ``1 - p``."""
    rng = random.Random(seed)
    return [[rng.choice(TAGS) if rng.random() < p else t for t in g] for g in gold]


def test_subset_is_seeded_a_true_subset_and_not_the_first_n():
    items = list(range(2000))
    a = sample_subset(items, 500, seed=7)
    assert a == sample_subset(items, 500, seed=7)  # deterministic for a seed
    assert a != sample_subset(items, 500, seed=8)  # differs across seeds
    assert len(a) == len(set(a)) == 500 and set(a) <= set(items)  # no duplicates, a subset
    assert a == sorted(a)  # file order kept
    assert a != items[:500]
    assert sample_subset(items, None) == items and sample_subset(items, 5000) == items


def test_entity_counts_give_seqeval_f1():
    gold = synthetic(300)
    pred = corrupt(gold, 0.3, seed=1)
    counts = entity_counts(gold, pred).sum(axis=0)
    assert f1_from_counts(counts) == pytest.approx(tagging_scores(gold, pred)["f1"], abs=1e-12)


def test_bootstrap_contains_the_estimate_and_is_reproducible():
    gold = synthetic(400)
    a, b = corrupt(gold, 0.4, seed=1), corrupt(gold, 0.38, seed=2)
    r = paired_bootstrap_f1(gold, a, b, resamples=500, seed=3)
    f1 = {k: tagging_scores(gold, p)["f1"] for k, p in (("a", a), ("b", b))}
    assert r.delta == pytest.approx(f1["b"] - f1["a"], abs=1e-12)
    assert r.low <= r.delta <= r.high and r.low < r.high
    assert r == paired_bootstrap_f1(gold, a, b, resamples=500, seed=3)
    assert r.to_dict()["seed"] == 3 and r.to_dict()["resamples"] == 500


def test_bootstrap_zero_width_for_identical_systems():
    gold = synthetic(200)
    a = corrupt(gold, 0.3, seed=1)
    r = paired_bootstrap_f1(gold, a, [list(s) for s in a], resamples=300)
    assert (r.delta, r.low, r.high) == (0.0, 0.0, 0.0)


def test_bootstrap_excludes_zero_for_a_clearly_better_system():
    gold = synthetic(500)
    worse, better = corrupt(gold, 0.6, seed=1), corrupt(gold, 0.1, seed=2)
    r = paired_bootstrap_f1(gold, worse, better, resamples=500)
    assert 0 < r.low <= r.delta <= r.high
    flipped = paired_bootstrap_f1(gold, better, worse, resamples=500)
    assert flipped.high < 0
