"""Multi-source task training: each batch from one source language, with that language's
diff applied for its forward/backward and removed, exactly, before the optimizer step.

Application goes through :mod:`diffs_store.compose` (the service's composition math). The
plan is built from the *current* parameter values each time (they move as the task
trains), and removal copies those saved values back, so after any number of batches the
parameters hold theta0 + task updates only, bit for bit.
"""

from __future__ import annotations

import random
from typing import Callable, Mapping, Sequence

import torch

from diffs_store.compose import apply_plan, build_patch_plan, restore_plan
from diffs_store.format import SparseDiff


def sparse_part_for(diff: SparseDiff, params: Mapping[str, torch.Tensor]) -> SparseDiff:
    """The part of a language diff a task model can hold: its sparse entries for parameters
    the model has. Entries for parameters it lacks (a pooler a token-classification model
    does not build) cannot affect its outputs; the MLM head is never applied under a task."""
    sparse = {n: part for n, part in diff.sparse.items() if n in params}
    return SparseDiff(meta=diff.meta, sparse=sparse, dense={})


class LanguageSwitch:
    """``switch(source)`` applies the source's diff and returns the function undoing it."""

    def __init__(self, params: Mapping[str, torch.Tensor], diffs: Mapping[str, SparseDiff | None]) -> None:
        self.params = params  # base-model names -> live tensors of the model being trained
        self.diffs = {k: None if d is None else sparse_part_for(d, params) for k, d in diffs.items()}
        self.active: str | None = None

    def __call__(self, source: str) -> Callable[[], None]:
        if self.active is not None:
            raise RuntimeError(f"language {self.active!r} is still applied")
        if source not in self.diffs:
            raise KeyError(f"batch from unknown source {source!r}; sources: {sorted(self.diffs)}")
        diff = self.diffs[source]
        if diff is None:
            return lambda: None
        plan = build_patch_plan(self.params, [diff])
        apply_plan(self.params, plan)
        self.active = source

        def undo() -> None:
            restore_plan(self.params, plan)
            self.active = None

        return undo


class SourceBatchSampler(torch.utils.data.Sampler):
    """Batches of indices that never mix sources: shuffle within each source, cut into
    batches, shuffle the batches (the reference's random source order). Reseeded per epoch
    (``set_epoch``) so runs are reproducible.

    With ``world_size`` processes (DDP), batch i goes to rank i % world_size and one
    optimizer step averages the ranks' gradients; so batches come in runs of
    ``world_size`` from one source (a source's last run topped up with its own first
    batches), and every rank of a step applies the same language diff. One process: the
    same batches in the same order as without runs.
    """

    def __init__(self, sources: Sequence[str], batch_size: int, seed: int = 0, world_size: int = 1) -> None:
        self.by_source: dict[str, list[int]] = {}
        for i, s in enumerate(sources):
            self.by_source.setdefault(s, []).append(i)
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        runs = []
        for source in sorted(self.by_source):
            idx = list(self.by_source[source])
            rng.shuffle(idx)
            runs += _runs([idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)], self.world_size)
        rng.shuffle(runs)
        return [batch for run in runs for batch in run]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return sum(self.world_size * -(-len(v) // (self.batch_size * self.world_size)) for v in self.by_source.values())


def _runs(batches: list[list[int]], size: int) -> list[list[list[int]]]:
    """Consecutive runs of ``size`` batches, the last one completed by cycling from the
    first batch (each process of a step needs a batch of the same source)."""
    n = -(-len(batches) // size) * size
    cycled = [batches[i % len(batches)] for i in range(n)]
    return [cycled[i : i + size] for i in range(0, n, size)]
