"""The model deployment: each replica is one ordinary engine (base model, scheduler, patcher,
plan cache), started exactly as the single-process server starts it.

Serve's model multiplexing sees a *pair* as a model. "Loading" ``hau|ner`` on a replica
means warming its patch plan and head: an empty job for the pair goes through the
scheduler, so the one model worker builds and caches the plan (and applies it, which is the
switch the first real request would have made anyway). Serve then routes the pair's later
requests to replicas that report it loaded.

Serve's per-replica model LRU is sized by count; after each load the count is set by
:func:`~service.scaleout.options.pair_capacity`: the replica's share of the catalog, and
never more than the plan cache's byte budget holds (``plan_cache_bytes`` over the mean
full plan bytes of a pair: its two layers and their overlap; shared layers are counted in
every pair, so the estimate errs towards forgetting a pair the cache still holds rather
than claiming one it has evicted). The share bounds what a fallback does: when Serve places
a request on a replica that does not hold its pair (its own replica was busy past the
matching timeout), that replica loads the pair too. Without a share the pair would stay on
both for good; past its share, a replica drops its least recently used pair and the
partition heals.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from service import metrics
from service.engine import Composition, RegistryDown
from service.scaleout.options import catalog_size, pair_capacity
from service.scaleout.pairs import PairReply, parse_pair_id

log = logging.getLogger(__name__)

# Serve's LRU size before the first pair's plan size is known.
INITIAL_PAIRS = 8
# Where Serve keeps a replica's multiplexing state (created on the first load).
_SERVE_MULTIPLEX_ATTR = "__serve_multiplex_wrapper"


def switch_count() -> int:
    """This process's count of applied-composition changes (the engine's counter)."""
    return int(metrics.counter_total(metrics.SWITCHES))


@serve.deployment(name="PairModel")
class PairModel:
    def __init__(
        self, settings_values: dict[str, Any], replicas: int = 1, pairs_per_replica: int | None = None
    ) -> None:
        """``replicas`` is the deployment's replica count (the initial one when autoscaling),
        which sets this replica's share of the catalog unless ``pairs_per_replica`` does."""
        from service.app import build_engine
        from service.config import Settings

        logging.basicConfig(level=logging.INFO)
        self.engine = build_engine(Settings(**settings_values))
        self.engine.start()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._loaded_bytes, self._loads = 0, 0  # plan bytes of the pairs loaded so far, for their mean
        self._replicas = replicas
        self._pairs_per_replica = pairs_per_replica
        self._catalog_pairs = 0  # unknown until the first refresh
        self._catalog_refresh: asyncio.Task | None = None

    @serve.multiplexed(max_num_models_per_replica=INITIAL_PAIRS)
    async def load_pair(self, model_id: str) -> str:
        """Warm ``model_id``'s plan and head on this replica (through the model worker)."""
        language, task = parse_pair_id(model_id)
        comp = await self.engine.resolve(language, task)
        await self.engine.predict(comp, [])
        self._record_plan_bytes(comp)
        self._fit_capacity()
        if self._catalog_refresh is None or self._catalog_refresh.done():
            self._catalog_refresh = asyncio.create_task(self._refresh_catalog())
        return model_id

    async def _refresh_catalog(self) -> None:
        """Read the catalog's size for this replica's share, beside the load rather than in
        it: a load needs no catalog, so a hung registry never holds one up (the last count,
        or the budget alone, stays in charge)."""
        try:
            combos = await self.engine.registry_call(self.engine.registry.pairs, self.engine.fingerprint, calls=3)
        except RegistryDown:
            log.warning("catalog size unavailable; keeping %d pairs", self._catalog_pairs)
            return
        self._catalog_pairs = catalog_size(combos)
        self._fit_capacity()

    async def predict(self, comp: Composition, windows: list) -> PairReply:
        """Serve one request of a composition the ingress resolved (its diff ids are what
        runs, so ingress and replica cannot disagree on versions)."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.load_pair(model_id)
        predictions = await self.engine.predict(comp, windows)
        return PairReply(predictions, self.replica, switch_count(), self.engine.scheduler.depth)

    def capacity(self) -> int | None:
        """How many pairs this replica reports loaded at most (None before its first load)."""
        wrapper = getattr(self, _SERVE_MULTIPLEX_ATTR, None)
        return None if wrapper is None else wrapper.max_num_models_per_replica

    def _record_plan_bytes(self, comp: Composition) -> None:
        plans = self.engine.plans
        items = [plans.get(i) for i in comp.key if i is not None]
        items.append(plans.get(comp.key) if None not in comp.key else None)
        self._loaded_bytes += sum(item.nbytes for item in items if item is not None)
        self._loads += 1

    def _fit_capacity(self) -> None:
        mean = self._loaded_bytes / max(1, self._loads)
        wrapper = getattr(self, _SERVE_MULTIPLEX_ATTR, None)
        if wrapper is not None and mean > 0:
            wrapper.max_num_models_per_replica = pair_capacity(
                budget_pairs=int(self.engine.plans.max_bytes // mean), catalog_pairs=self._catalog_pairs,
                replicas=self._replicas, pairs_per_replica=self._pairs_per_replica,
            )

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()
