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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

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
from service.hot_tier import HotTier
from service.patcher import Patcher, PlanCache, switch_kind
from service.registry_watch import RegistryWatch
from service.scheduler import Job, Scheduler
from service.tasks import TASKS, InputError, Limits, Prepared, TaskIO
from service.tasks.base import model_window

log = logging.getLogger(__name__)

# Planning a diff the first time (read, validate, build) costs several times writing it.
COLD_FACTOR = 4.0
# What "the registry is unreachable" looks like from here.
REGISTRY_DOWN = (RedisUnavailable, redis.RedisError, OSError, TimeoutError)
# Redis calls a lookup may make (each bounded by the socket timeout) before it is abandoned.
_LOOKUP_CALLS = 3

T = TypeVar("T")


class UnknownPair(LookupError):
    """404: the language or task is not in the registry for this base."""


class RegistryDown(RuntimeError):
    """503: the registry is unreachable and this pair is not cached."""


class BlobMissing(RegistryDown):
    """503: the pair's diff is registered but its file is missing from the blob store."""

    def __init__(self, entry: Entry | str) -> None:
        what = (f"{entry.kind.value} diff {entry.key!r} version {entry.version} (id {entry.id})"
                if isinstance(entry, Entry) else f"diff {entry}")
        super().__init__(
            f"{what} is registered but its file is missing from the blob store; this pair cannot be served until "
            "the diff is uploaded again or retired"
        )


REBUILDING = "the registry lost its data and is being rebuilt from the blob store; retry shortly"


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
    def io(self) -> TaskIO:
        return TASKS[self.task_type]

    @property
    def labels(self) -> tuple[str, ...]:
        """The task head's labels in output order (none for QA and fill-mask)."""
        return self.task.labels if self.task else ()

    def describe(self) -> dict[str, Any]:
        return {
            kind: {"id": e.id, "version": e.version}
            for kind, e in (("language", self.language), ("task", self.task))
            if e is not None
        }


class Engine:
    def __init__(
        self, settings: Settings, host: ModelHost, registry: Registry, *, embedded_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.host = host
        self.registry = registry
        self.plans = PlanCache(settings.plan_cache_bytes)
        pristine = {k: v.detach().clone() for k, v in host.params.items()} if settings.pristine_copy else None
        # Union plans of hot pairs are built on the prewarm thread (_warm_pool, below).
        hot = HotTier(self.plans, settings.hot_promote_after, self._submit_warm)
        self.patcher = Patcher(host.params, self.plans, pristine, hot)
        self.scheduler = Scheduler(
            self._execute,
            lambda: self.patcher.active,
            max_batch_size=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000,
            switch_after=settings.switch_after_ms / 1000,
            switch_cost=self._switch_cost,
        )
        self._nnz: dict[str, int] = {}  # diff id -> entries, for pricing switches to unplanned diffs
        self._heads = ByteLRU(settings.head_cache_bytes, size=host.head_nbytes, gauge=metrics.HEAD_CACHE_BYTES)
        self._resolved: dict[tuple[str | None, str | None], Composition] = {}
        self._seen_counter: int | None = None
        self._generation = 0  # bumped whenever resolved pairs are dropped
        self._lock = threading.Lock()
        # Registry calls run here, never on the event loop; a few threads, so a hung Redis
        # ties up at most these while the breaker opens.
        self._registry_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="registry")
        self.watch = RegistryWatch(
            registry, self._on_counter, poll_s=settings.registry_poll_ms / 1000, embedded_dir=embedded_dir,
            fingerprint=host.spec.fingerprint, audit_s=settings.registry_audit_s,
            rebuild_on_loss=settings.rebuild_on_loss,
        )
        # Builds layers of newly announced diffs off the worker (see _prewarm): one thread,
        # and at most one pass queued behind the running one.
        self._warm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prewarm")
        self._warm_queued = threading.Event()
        # Test hook: called inside the worker right before each forward pass.
        self.before_forward = None
        self.limits = Limits(model_window(host.tokenizer, host.spec.config, settings.max_seq_len))

    def start(self) -> None:
        self.watch.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.watch.stop()
        self.scheduler.stop()
        self.patcher.restore()
        self._registry_pool.shutdown(wait=False, cancel_futures=True)
        self._warm_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def fingerprint(self) -> str:
        return self.host.spec.fingerprint

    # -- resolution (request side) ------------------------------------------------------

    def _on_counter(self, counter: int) -> None:
        """Called by the watcher with each counter read: drop resolved pairs when it moved."""
        with self._lock:
            if counter != self._seen_counter:
                self._seen_counter = counter
                self._drop_resolved()
                self._schedule_prewarm()

    def invalidate(self) -> None:
        """Forget every resolved pair."""
        with self._lock:
            self._drop_resolved()

    async def changed_here(self) -> None:
        """This process changed the registry: read the new counter now (off the event loop),
        which drops resolved pairs once, instead of waiting for the next poll. Dropping them
        without recording the counter would let that poll drop them a second time, and a
        pair resolved in between would be lost to an outage that starts right after."""
        if not await asyncio.to_thread(self.watch.poll_once):
            self.invalidate()

    # -- prewarming (cold start) ------------------------------------------------------------

    def _schedule_prewarm(self) -> None:
        if not (self.settings.prewarm and self.patcher.can_warm()) or self._warm_queued.is_set():
            return
        self._warm_queued.set()
        try:
            self._warm_pool.submit(self._prewarm)
        except RuntimeError:  # shutting down
            pass

    def _submit_warm(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the prewarm thread, after what is queued there (off the worker).
        Raises RuntimeError once the engine is stopping."""

        def logged() -> None:
            try:
                fn()
            except Exception:  # the work just stays undone; the request path does not depend on it
                log.exception("background planning failed")

        self._warm_pool.submit(logged)

    def wait_prewarmed(self, timeout: float) -> bool:
        """Block until the prewarming passes queued so far are done (benchmarks, tests)."""
        try:
            self._warm_pool.submit(lambda: None).result(timeout)
            return True
        except Exception:
            return False

    def _prewarm(self) -> int:
        """Plan every servable composition of this base ahead of its first request, while
        the plan-cache budget allows: the layer of each diff (the latest version of each
        language and task), the head of each task diff (and fill-mask language diff), then
        the overlap of each (language, task) pair. The first request of a pair then pays
        its switch, not the reading, validating and planning of its diffs. Runs on its own
        thread, from the pristine copy; returns how many things it built."""
        self._warm_queued.clear()
        try:
            entries = self.registry.list(self.fingerprint)
        except REGISTRY_DOWN:
            return 0
        latest: dict[tuple[DiffKind, str], Entry] = {}
        for entry in entries:
            if entry.version > getattr(latest.get((entry.kind, entry.key)), "version", 0):
                latest[(entry.kind, entry.key)] = entry
        diffs: dict[str, Any] = {}  # loaded once for this pass, dropped at its end

        def load(diff_id: str):
            if diff_id not in diffs:
                diffs[diff_id] = self._load_diff(diff_id)
            return diffs[diff_id]

        built = 0
        for entry in latest.values():
            try:
                if entry.id not in self.plans:
                    built += self.patcher.warm(entry.id, load(entry.id))
                # A diff with a task type has a head: every task diff, a fill-mask language diff.
                if entry.task_type is not None and self._heads.peek(entry.id) is None:
                    built += self._heads.put_if_room(entry.id, self._build_head(load(entry.id), entry.task_type))
            except Exception as exc:  # the request path reports a bad diff; here it just stays cold
                log.warning("prewarm of %s skipped: %s", entry.id[:12], exc)
        languages = [e for (kind, _), e in latest.items() if kind is DiffKind.LANGUAGE]
        tasks = [e for (kind, _), e in latest.items() if kind is DiffKind.TASK]
        for lang in languages:
            for task in tasks:
                try:
                    key = (lang.id, task.id)
                    if key not in self.plans:
                        built += self.patcher.warm_overlap(key, (load(lang.id), load(task.id)))
                except Exception as exc:
                    log.warning("prewarm of pair %s|%s skipped: %s", lang.key, task.key, exc)
        if built:
            metrics.PREWARMED.inc(built)
        return built

    def _drop_resolved(self) -> None:
        self._resolved.clear()
        self._generation += 1

    async def registry_call(self, fn: Callable[..., T], *args: Any, calls: int = 1) -> T:
        """Run a registry call off the event loop, bounded in time, behind the breaker.

        ``calls`` is how many Redis round trips ``fn`` may make; the wait is bounded by that
        many socket timeouts. Raises :class:`RegistryDown` when the breaker is open, on a
        timeout, or when Redis fails (which opens the breaker).
        """
        if not self.watch.up:
            raise RegistryDown("the registry is unreachable; retry shortly")
        if self.watch.rebuilding:
            raise RegistryDown(REBUILDING)
        loop = asyncio.get_running_loop()
        timeout = self.settings.redis_timeout_s * calls + 0.5
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._registry_pool, fn, *args), timeout)
        except (*REGISTRY_DOWN, asyncio.TimeoutError):
            self.watch.record_failure()
            raise RegistryDown("the registry is unreachable; retry shortly") from None

    async def resolve(self, language: str | None, task: str | None) -> Composition:
        """The composition for these names: from the resolved pairs without touching Redis,
        else looked up off the event loop (503 fast while the registry is down)."""
        if language is None and task is None:
            raise Unservable("name a language, a task, or both")
        try:  # an empty name is a bad name (422), not an omitted one
            lang = normalise_language(language) if language is not None else None
            task_name = normalise_task(task) if task is not None else None
        except ValueError as exc:
            raise Unservable(str(exc)) from None
        names = (lang, task_name)
        with self._lock:
            cached = self._resolved.get(names)
            generation = self._generation
        if cached is not None:
            self._check_blobs(cached)
            return cached
        if not self.watch.up:
            raise RegistryDown("the registry is unreachable and this pair is not cached; retry shortly")
        comp = await self.registry_call(self._lookup, lang, task_name, calls=_LOOKUP_CALLS)
        self._check_blobs(comp)
        with self._lock:
            if generation == self._generation:  # not invalidated while we looked
                self._resolved[names] = comp
        return comp

    def _check_blobs(self, comp: Composition) -> None:
        """503 when the last audit found a diff of this pair without its file."""
        missing = self.watch.missing_blobs
        for entry in (comp.language, comp.task):
            if missing and entry is not None and entry.id in missing:
                raise BlobMissing(entry)

    def _lookup(self, language: str | None, task: str | None) -> Composition:
        if language is None and task is None:  # resolve() refuses this first; never look up nothing
            raise Unservable("name a language, a task, or both")
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
        for entry in (lang_entry, task_entry):
            if entry is not None:
                if not self.registry.blobs.exists(entry.id):  # one stat: a pair never resolves to missing bytes
                    raise BlobMissing(entry)
                self._nnz[entry.id] = entry.nnz
        return Composition(lang_entry, task_entry, task_type)

    # -- prediction ------------------------------------------------------------------------

    def prepare(self, comp: Composition, inputs: list[Any], params, names: list[str]) -> list[Prepared]:
        """Each input as its windows (CPU work: call it off the event loop). A refused input
        is named (``names[i]``, e.g. ``inputs[2]``) in the error."""
        prepared = []
        for raw, name in zip(inputs, names):
            try:
                prepared.append(comp.io.prepare(self.host.tokenizer, raw, params, self.limits))
            except InputError as exc:
                raise InputError(f"{name}: {exc}", exc.status) from None
            except (TypeError, ValueError, UnicodeError) as exc:  # what the tokenizer cannot read
                raise InputError(f"{name}: the tokenizer cannot read it ({type(exc).__name__})") from None
        return prepared

    def postprocess(self, comp: Composition, prepared: list[Prepared], outputs: list[list[dict]], params) -> list[Any]:
        """The task's answers from the windows' outputs (CPU work: off the event loop)."""
        return [comp.io.postprocess(self.host.tokenizer, p, o, params, comp.labels) for p, o in zip(prepared, outputs)]

    async def predict(self, comp: Composition, windows: list[list[dict]]) -> list[list[dict]]:
        """Run every input's windows (``windows[i]``: input i's) in the composition; answers
        the windows' outputs, per input.

        Fair share: a request goes to the worker one batch of windows at a time
        (``max_batch_size`` of them) and queues its next batch only when the previous one is
        done, so a request of 64 long documents (hundreds of windows) takes turns with the
        requests that arrive meanwhile instead of holding the worker for all of them."""
        chunks = self._turns([w for item in windows for w in item])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_s
        outputs: list[dict] = []
        for chunk in chunks:
            future = self.scheduler.submit(Job(key=comp.key, payload=(comp, [chunk]), size=len(chunk)))
            try:
                done = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - loop.time()))
            except (asyncio.TimeoutError, asyncio.CancelledError):
                future.cancel()  # a job not yet taken is dropped by the worker
                raise
            outputs += done[0]
        per_input, offset = [], 0
        for item in windows:
            per_input.append(outputs[offset : offset + len(item)])
            offset += len(item)
        return per_input

    def _turns(self, windows: list[dict]) -> list[list[dict]]:
        """Windows cut into the batches a request queues one after the other: at most
        ``max_batch_size`` windows and ``max_batch_tokens`` tokens (padded) each, which
        bounds how long another request waits for its turn."""
        turns: list[list[dict]] = [[]]
        longest = 0
        for window in windows:
            n = len(window["input_ids"])
            full = len(turns[-1]) >= self.settings.max_batch_size
            if turns[-1] and (full or max(longest, n) * (len(turns[-1]) + 1) > self.settings.max_batch_tokens):
                turns.append([])
                longest = 0
            turns[-1].append(window)
            longest = max(longest, n)
        return turns

    # -- worker side -----------------------------------------------------------------------

    def _switch_cost(self, current, target) -> float:
        """The scheduler's price of a switch: entries written for the diffs that change, a
        diff not yet planned counting ``COLD_FACTOR`` times (reading, validating, planning)."""
        changed = {i for i in (current or ()) if i is not None} ^ {i for i in target if i is not None}
        cost = 0.0
        for diff_id in changed:
            layer = self.plans.peek(diff_id)
            cost += layer.nnz if layer is not None else COLD_FACTOR * self._nnz.get(diff_id, 1)
        return cost

    def _load_diff(self, diff_id: str):
        try:
            data = self.registry.load_bytes(diff_id)
        except errors.NotFound:  # the file went between two audits: 503 now, and for the pair from now on
            self.watch.missing_blobs = self.watch.missing_blobs | {diff_id}
            raise BlobMissing(diff_id) from None
        return validate_diff_bytes(data, self.host.spec, max_bytes=len(data) + 1)

    def _head(self, comp: Composition, load_diff) -> torch.nn.Module:
        model = self._heads.get(comp.head_id)
        if model is None:
            model = self._build_head(load_diff(comp.head_id), comp.task_type)
            self._heads.put(comp.head_id, model)
        return model

    def _build_head(self, diff, task_type: TaskType) -> torch.nn.Module:
        """The task model around the shared encoder (reads no live weight: safe off the
        worker when theta0 comes from the pristine copy)."""
        head = head_tensors(diff, self.patcher.pristine_tensor)
        return self.host.build_task_model(task_type, diff.meta.labels, head)

    def _execute(self, key, jobs: list[Job]) -> None:
        comp: Composition = jobs[0].payload[0]
        try:
            loaded: dict[str, Any] = {}  # a new pair's task diff feeds both its head and its layer

            def load_diff(diff_id: str):
                if diff_id not in loaded:
                    loaded[diff_id] = self._load_diff(diff_id)
                return loaded[diff_id]

            model = self._head(comp, load_diff)
            if self.patcher.active != key:
                cold = any(i is not None and i not in self.plans for i in key)
                kind = "cold" if cold else switch_kind(self.patcher.active, key)
                start = time.perf_counter()
                tier = self.patcher.activate(key, load_diff)
                metrics.SWITCHES.labels(kind, tier).inc()
                metrics.SWITCH_SECONDS.labels(kind, tier).inc(time.perf_counter() - start)
            windows = [w for job in jobs for item in job.payload[1] for w in item]
            forward_start = time.perf_counter()
            outputs: list[dict] = []
            step = self.settings.max_batch_size
            for start in range(0, len(windows), step):
                if self.before_forward is not None:
                    self.before_forward(comp)
                outputs.extend(comp.io.forward(model, self.host.tokenizer, windows[start : start + step], self.host.device))
            if windows:
                metrics.FORWARD_SECONDS.observe(time.perf_counter() - forward_start)
        except BaseException:
            self.patcher.restore()  # never leave a half-known state behind
            raise
        offset = 0
        for job in jobs:
            per_input = []
            for item in job.payload[1]:
                per_input.append(outputs[offset : offset + len(item)])
                offset += len(item)
            if not job.future.done():
                job.future.set_result(per_input)
