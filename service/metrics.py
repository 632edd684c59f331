"""Prometheus metrics, defined once. Exposed at GET /metrics.

Request metrics are labelled with the *registered* language and task a request resolved to,
never with the raw strings a client sent: those are unbounded, and every new label value is
a new time series kept forever. Names that did not resolve share one bucket.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NOT_GIVEN = "-"
UNRESOLVED = "other"  # a name the registry does not know (or could not be asked about)

REQUESTS = Counter("csft_requests_total", "Predict requests by pair and HTTP status.", ["language", "task", "status"])
LATENCY = Histogram(
    "csft_request_seconds", "Predict latency, end to end inside the server.", ["language", "task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("csft_queue_depth", "Requests waiting for the model worker.")
BATCH_SIZE = Histogram("csft_batch_inputs", "Inputs per forward pass.", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
FORWARD_SECONDS = Histogram(
    "csft_forward_seconds", "Worker time per batch in the model: forward pass and answers (switch excluded).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PATCH_SECONDS = Histogram(
    "csft_patch_seconds", "Time to apply or restore a composition.", ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PLAN_CACHE = Counter("csft_plan_cache_total", "Patch-plan cache lookups.", ["result"])
PLAN_CACHE_BYTES = Gauge("csft_plan_cache_bytes", "Bytes held by cached patch plans.")
HEAD_CACHE_BYTES = Gauge("csft_head_cache_bytes", "Bytes held by cached task heads (tensors not shared with the encoder).")
PREWARMED = Counter("csft_prewarmed_total", "Layers, heads and pair overlaps built ahead of their first request.")
SWITCHES = Counter(
    "csft_pair_switches_total",
    "Times the applied composition changed, by kind: language or task (one diff changes), pair (both), "
    "base (from or to the bare base), cold (a diff had to be planned first); and by the tier that wrote "
    "the target: union (a hot pair's union plan) or layers.",
    ["kind", "tier"],
)
SWITCH_SECONDS = Counter(
    "csft_switch_seconds_total", "Worker time spent switching compositions, by kind and tier.", ["kind", "tier"]
)
HOT_PAIRS = Gauge("csft_hot_pairs", "Pairs with a cached union plan (the hot-pair tier of the plan cache).")
HOT_PLAN_BYTES = Gauge("csft_hot_plan_bytes", "Bytes of the plan cache held by hot pairs' union plans.")
HOT_PROMOTIONS = Counter("csft_hot_promotions_total", "Union plans built for pairs promoted by use.")
MISSING_BLOBS = Gauge(
    "csft_missing_blobs", "Registered diffs of the loaded base whose file is missing from the blob store "
    "(their pairs answer 503 until the diff is uploaded again or retired).",
)
REGISTRY_REBUILDS = Counter(
    "csft_registry_rebuilds_total", "Times the running server rebuilt the registry from the blob store after Redis "
    "lost its data.",
)
REGISTRY_UP = Gauge("csft_registry_up", "1 when the last registry poll succeeded (circuit breaker closed).")
CONNECTIONS_CLOSED = Counter(
    "csft_connections_closed_total",
    "Client connections the server closed itself (service.connection_guard): header_timeout, body_timeout, "
    "header_too_large, evicted (at the connection cap), refused (cap full of requests being answered).",
    ["reason"],
)
OPEN_CONNECTIONS = Gauge("csft_open_connections", "Client connections open now (csft serve, single process).")
ADMIN_AUTH_REFUSED = Counter(
    "csft_admin_auth_refused_total", "Admin requests refused: wrong_token (403) or limited (429).", ["reason"]
)


def pair_labels(language: str | None, task: str | None, comp=None) -> tuple[str, str]:
    """Bounded label values: the resolved entries' keys, else one bucket for unknown names."""
    if comp is not None:
        return (comp.language.key if comp.language else NOT_GIVEN, comp.task.key if comp.task else NOT_GIVEN)
    return (UNRESOLVED if language else NOT_GIVEN, UNRESOLVED if task else NOT_GIVEN)

# Scale-out (service.scaleout): what the ingress learnt from each model replica's answers.
REPLICA_REQUESTS = Counter("csft_replica_requests_total", "Predict requests answered, by model replica.", ["replica"])
REPLICA_SWITCHES = Gauge(
    "csft_replica_switches", "A model replica's pair switches, as of its latest answer.", ["replica"]
)
REPLICA_QUEUE = Gauge(
    "csft_replica_queue_depth", "Requests waiting at a model replica's worker, as of its latest answer.", ["replica"]
)


def counter_total(counter: Counter) -> float:
    """A counter's sum over all its labels: the same number /metrics reports, summed."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
