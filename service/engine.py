"""The request-time composition engine: resolve a (language, task) to diffs, queue, run.

Pipeline: the API resolves names to registry entries (:meth:`Engine.resolve`), prepares
inputs with the task adapter, and submits a job; the scheduler's single worker calls
:meth:`Engine._execute`, which activates the composition through the patcher, runs the task
model in chunks and answers the futures. Any failure between patch and answer restores the
pristine base before the worker takes the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import redis
import torch

from diffs_store import errors
from diffs_store.redis_connection import RedisUnavailable
from diffs_store.heads import head_tensors
from diffs_store.metadata import DiffKind, TaskType, normalise_language, normalise_task
from diffs_store.registry import Entry, Registry
from diffs_store.validate import validate_diff_bytes
from service import metrics
from service.config import Settings
from service.model_host import ModelHost
from service.lru import ByteLRU
from service.patcher import Patcher, PlanCache
from service.scheduler import Job, Scheduler
from service.tasks import ADAPTERS, TaskAdapter
from service.tasks.common import Prepared

log = logging.getLogger(__name__)

# What "the registry is unreachable" looks like from here.
REGISTRY_DOWN = (RedisUnavailable, redis.RedisError, OSError)


class UnknownPair(LookupError):
    """404: the language or task is not in the registry for this base."""


class RegistryDown(RuntimeError):
    """503: the registry is unreachable and this pair is not cached."""


class Unservable(ValueError):
    """422: the pair exists but cannot answer this request (e.g. fill-mask without an MLM head)."""


@dataclass(frozen=True)
class Composition:
    """A resolved request target: which diffs, and which head to run."""

    language: Entry | None
    task: Entry | None
    task_type: TaskType

    @property
    def key(self) -> tuple[str | None, str | None]:
        return (self.language.id if self.language else None, self.task.id if self.task else None)

    @property
    def head_id(self) -> str:
        return self.task.id if self.task else self.language.id  # type: ignore[union-attr]

    @property
    def adapter(self) -> TaskAdapter:
        return ADAPTERS[self.task_type]

    def describe(self) -> dict[str, Any]:
        return {
            kind: {"id": e.id, "version": e.version}
            for kind, e in (("language", self.language), ("task", self.task))
            if e is not None
        }


class Engine:
    def __init__(self, settings: Settings, host: ModelHost, registry: Registry) -> None:
        self.settings = settings
        self.host = host
        self.registry = registry
        self.plans = PlanCache(settings.plan_cache_bytes)
        pristine = {k: v.detach().clone() for k, v in host.params.items()} if settings.pristine_copy else None
        self.patcher = Patcher(host.params, self.plans, pristine)
        self.scheduler = Scheduler(
            self._execute,
            lambda: self.patcher.active,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000,
            switch_after=settings.switch_after_ms / 1000,
        )
        self._heads = ByteLRU(settings.head_cache_bytes, size=host.head_nbytes, gauge=metrics.HEAD_CACHE_BYTES)
        self._resolved: dict[tuple[str | None, str | None], Composition] = {}
        self._seen_counter: int | None = None
        self._lock = threading.Lock()
        # Test hook: called inside the worker right before each forward pass.
        self.before_forward = None

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.patcher.restore()

    @property
    def fingerprint(self) -> str:
        return self.host.spec.fingerprint

    # -- resolution (request side) ------------------------------------------------------

    def _refresh(self) -> bool:
        """Drop resolved pairs when the registry's change counter moved. False: registry down."""
        try:
            counter = self.registry.change_counter()
        except REGISTRY_DOWN:
            return False
        with self._lock:
            if counter != self._seen_counter:
                self._resolved.clear()
                self._seen_counter = counter
        return True

    def resolve(self, language: str | None, task: str | None) -> Composition:
        if language is None and task is None:
            raise Unservable("name a language, a task, or both")
        try:
            lang = normalise_language(language) if language else None
            task_name = normalise_task(task) if task else None
        except ValueError as exc:
            raise Unservable(str(exc)) from None
        names = (lang, task_name)
        up = self._refresh()
        with self._lock:
            cached = self._resolved.get(names)
        if cached is not None:
            return cached
        if not up:
            raise RegistryDown("the registry is unreachable and this pair is not cached; retry shortly")
        try:
            comp = self._lookup(lang, task_name)
        except REGISTRY_DOWN:
            raise RegistryDown("the registry is unreachable; retry shortly") from None
        with self._lock:
            self._resolved[names] = comp
        return comp

    def _lookup(self, language: str | None, task: str | None) -> Composition:
        fp = self.fingerprint
        lang_entry = task_entry = None
        if language is not None:
            try:
                lang_entry = self.registry.resolve(fp, DiffKind.LANGUAGE, language)
            except errors.NotFound:
                available = ", ".join(self.registry.languages(fp)) or "none"
                raise UnknownPair(f"unknown language {language!r}; available: {available}") from None
        if task is not None:
            try:
                task_entry = self.registry.resolve(fp, DiffKind.TASK, task)
            except errors.NotFound:
                available = ", ".join(t["task"] for t in self.registry.tasks(fp)) or "none"
                raise UnknownPair(f"unknown task {task!r}; available: {available}") from None
            task_type = TaskType(task_entry.task_type)
        else:
            if lang_entry.task_type != TaskType.FILL_MASK.value:  # type: ignore[union-attr]
                raise Unservable(
                    f"language {language!r} has no MLM head, so it cannot answer alone; name a task too"
                )
            task_type = TaskType.FILL_MASK
        return Composition(lang_entry, task_entry, task_type)

    # -- prediction ------------------------------------------------------------------------

    def prepare(self, comp: Composition, inputs: list[Any]) -> list[Prepared]:
        return [comp.adapter.prepare(self.host.tokenizer, raw, self.settings.max_seq_len) for raw in inputs]

    async def predict(self, comp: Composition, prepared: list[Prepared]) -> list[dict]:
        job = Job(key=comp.key, payload=(comp, prepared), size=len(prepared))
        future = self.scheduler.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.request_timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            future.cancel()  # a job not yet taken is dropped by the worker
            raise

    # -- worker side -----------------------------------------------------------------------

    def _load_diff(self, diff_id: str):
        data = self.registry.load_bytes(diff_id)
        return validate_diff_bytes(data, self.host.spec, max_bytes=len(data) + 1)

    def _head(self, comp: Composition, load_diff) -> torch.nn.Module:
        model = self._heads.get(comp.head_id)
        if model is None:
            diff = load_diff(comp.head_id)
            head = head_tensors(diff, self.patcher.pristine_tensor)
            model = self.host.build_task_model(comp.task_type, diff.meta.labels, head)
            self._heads.put(comp.head_id, model)
        return model

    def _execute(self, key, jobs: list[Job]) -> None:
        comp: Composition = jobs[0].payload[0]
        try:
            loaded: dict[str, Any] = {}  # a new pair's task diff feeds both its head and its layer

            def load_diff(diff_id: str):
                if diff_id not in loaded:
                    loaded[diff_id] = self._load_diff(diff_id)
                return loaded[diff_id]

            model = self._head(comp, load_diff)
            switched = self.patcher.active != key
            self.patcher.activate(key, load_diff)
            if switched:
                metrics.SWITCHES.inc()
            prepared = [p for job in jobs for p in job.payload[1]]
            results: list[dict] = []
            step = self.settings.max_batch_size
            for start in range(0, len(prepared), step):
                if self.before_forward is not None:
                    self.before_forward(comp)
                chunk = prepared[start : start + step]
                results.extend(comp.adapter.run(model, self.host.tokenizer, chunk, self.host.device))
        except BaseException:
            self.patcher.restore()  # never leave a half-known state behind
            raise
        offset = 0
        for job in jobs:
            n = job.size
            if not job.future.done():
                job.future.set_result(results[offset : offset + n])
            offset += n
