"""LT-SFT under DistributedDataParallel: a real 2-process gloo job on CPU (loopback only).

The test starts ``torchrun`` on this very file; each rank runs the documented commands
(``csft train language``, then ``csft train task`` on top of that language diff) and
records, per phase, a sha256 of its parameters and of every batch it trained on.
Gradient reduction is what keeps ranks that see *different* batches bit-identical: if a
loss bypassed DDP's forward (e.g. ``model.module.base_model(...)``), each rank would step
on its own gradients and the digests would differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.ddp

RANKS = 2
JOBS = ("language", "task")
PHASES = ("phase1", "phase2")
STEPS = ["--full-max-steps", "3", "--sparse-max-steps", "3", "--batch-size", "4", "--max-seq-len", "32",
         "--lr", "2e-3", "--weight-decay", "0.1"]


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names and raw bytes: equal digests mean bit-identical tensors."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- the worker: one rank of the torchrun job ---------------------------------------------


def _install_recorders(record: dict) -> None:
    """Record, without changing what is trained: batches seen, parameters at each phase's
    end, and every diff file written (to check only rank 0 writes)."""
    from transformers import TrainerCallback

    from diffs_store.format import SparseDiff
    from trainer import hf

    class PhaseEnd(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            work = Path(args.output_dir)
            record["phases"][f"{work.parent.name}/{work.name}"] = _digest(dict(model.named_parameters()))

    step, init, save = hf.LtSftTrainer.training_step, hf.LtSftTrainer.__init__, SparseDiff.save

    def recording_step(self, model, inputs, num_items_in_batch=None):
        record["batches"].append(_digest({"input_ids": inputs["input_ids"]}))
        return step(self, model, inputs, num_items_in_batch)

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(PhaseEnd())

    def recording_save(self, path):
        record["saves"].append(str(path))
        return save(self, path)

    hf.LtSftTrainer.training_step = recording_step
    hf.LtSftTrainer.__init__ = recording_init
    SparseDiff.save = recording_save


def _worker(base_dir: str, out: str) -> None:
    """Train a language diff, then an NER task diff with it, through the CLI, as a user would
    under torchrun; write this rank's record."""
    import torch.distributed as dist

    from service.cli import app

    rank = int(os.environ["RANK"])
    record: dict = {"batches": [], "phases": {}, "saves": []}
    _install_recorders(record)
    o = Path(out)
    app(["train", "language", "--base", base_dir, "--language", "en", "--train", str(o / "en.txt"), "--k", "200",
         "-o", str(o / "en.safetensors"), "--work-dir", str(o / "language"), *STEPS], standalone_mode=False)
    dist.barrier()  # rank 0 has written the language diff the task job reads
    app(["train", "task", "--base", base_dir, "--task", "ner", "--train", f"en={o / 'ner.txt'}", "--language-diff",
         str(o / "en.safetensors"), "--k", "300", "-o", str(o / "ner.safetensors"), "--work-dir", str(o / "task"),
         *STEPS], standalone_mode=False)
    (o / f"rank{rank}.json").write_text(json.dumps(record))


# -- the tests ----------------------------------------------------------------------------


def _torchrun(base_dir: Path, out: Path) -> subprocess.CompletedProcess:
    """``torchrun`` with 2 CPU processes on loopback (gloo), bounded in time so a rank
    waiting forever on a collective fails the test instead of hanging CI."""
    from tests.support import free_port  # here, not at the top: the workers run this file as a script

    scratch = out / "tmp"  # torchrun's per-run log directories land here, not in /tmp
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CSFT_TORCH_THREADS": "1", "TMPDIR": str(scratch)}
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo would otherwise pick the hostname's interface
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(RANKS),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        __file__, "--worker", str(base_dir), str(out),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_ddp_language_and_task_jobs_reduce_gradients(tmp_path):
    from diffs_store.base import load_base_model
    from diffs_store.format import diff_id
    from diffs_store.validate import validate_diff_bytes
    from tests.support import make_base_dir
    from tests.test_trainer import lines, sentences

    base_dir = make_base_dir(tmp_path / "tiny-bert")
    (tmp_path / "en.txt").write_text("\n".join(lines(64)) + "\n")
    conll = "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(s.words, s.tags)) for s in sentences(48)) + "\n"
    (tmp_path / "ner.txt").write_text(conll)

    started = time.time()
    run = _torchrun(base_dir, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    print(f"2-process torchrun job: {time.time() - started:.1f} s")
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(RANKS)]

    # Each rank trained on its own shard of the data...
    seen = [set(r["batches"]) for r in records]
    assert all(seen) and not seen[0] & seen[1], "both ranks trained on the same batches: no process group"
    # ...and still ends every phase of both jobs bit-identical: the gradients were all-reduced.
    # (The tiny base has no MLM head: the language job warms its head up first, under DDP too.)
    expected = {f"{job}/{phase}" for job in JOBS for phase in PHASES} | {"language/head-warmup"}
    assert set(records[0]["phases"]) == expected
    for key in sorted(expected):
        assert records[0]["phases"][key] == records[1]["phases"][key], f"ranks diverged in {key}"
    assert len({records[0]["phases"][k] for k in expected}) == len(expected)  # every phase moved them

    # Each diff file is written once, by rank 0, and is valid for the base.
    outputs = [str(tmp_path / "en.safetensors"), str(tmp_path / "ner.safetensors")]
    assert records[0]["saves"] == outputs and records[1]["saves"] == []
    _, spec = load_base_model(str(base_dir))
    for path in outputs:
        data = Path(path).read_bytes()
        diff = validate_diff_bytes(data, spec)
        assert diff.nnz > 0 and diff.meta.base_fingerprint == spec.fingerprint
        assert f"id {diff_id(data)}" in run.stdout  # the CLI reports it (rank 0 only: once)
        assert run.stdout.count(f"wrote {path}:") == 1


def test_mlm_loss_through_a_wrapper_equals_the_masked_positions_path(tmp_path):
    """A wrapped model (DDP, DataParallel) is called through its own forward; the loss and
    its gradients equal the bare model's cheaper masked-positions-only path."""
    from diffs_store.metadata import TaskType
    from trainer.data.encode import collator_for, encode_lines
    from trainer.jobs import Base
    from trainer.models import build_model, mlm_loss
    from tests.support import make_base_dir
    from tests.test_trainer import lines

    base = Base.load(str(make_base_dir(tmp_path / "tiny-bert")))
    model, _ = build_model(base.model, base.spec, TaskType.FILL_MASK)
    model.eval()  # no dropout: both paths see the same network
    collate = collator_for(TaskType.FILL_MASK, base.tokenizer, mlm_probability=0.3, seed=0)
    batch = collate(encode_lines(base.tokenizer, lines(8), 32))

    def loss_and_grads(m: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = mlm_loss(m, dict(batch))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    bare, bare_grads = loss_and_grads(model)
    wrapped, wrapped_grads = loss_and_grads(nn.DataParallel(model))  # on CPU: a plain forwarding wrapper
    torch.testing.assert_close(wrapped, bare, rtol=0, atol=1e-6)
    assert wrapped_grads.keys() == bare_grads.keys()
    for name, grad in bare_grads.items():
        torch.testing.assert_close(wrapped_grads[name], grad, rtol=1e-5, atol=1e-7)


def test_multisource_batches_come_in_one_source_runs_of_world_size():
    """accelerate gives batch i to rank i % world_size: each optimizer step (the ranks'
    averaged gradients) must still see one source, every index at least once per epoch."""
    from trainer.multisource import SourceBatchSampler

    tags = ["hau"] * 10 + ["swa"] * 22 + ["yor"] * 5
    sampler = SourceBatchSampler(tags, batch_size=4, seed=1, world_size=2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 4 + 6 + 2  # hau: 3 batches topped up to 4
        for step in range(0, len(batches), 2):
            assert len({tags[i] for batch in batches[step : step + 2] for i in batch}) == 1
        assert {i for batch in batches for i in batch} == set(range(len(tags)))


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(*sys.argv[2:4])
