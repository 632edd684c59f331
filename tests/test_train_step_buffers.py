"""The phase-1/phase-2 step with reused buffers leaves bit-identical parameters to the
straightforward formulation: masks by ``torch.where``, L1 by
``sign(theta - theta_ref) * alpha``, frozen entries copied back by ``torch.where``."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertForMaskedLM

from tests.support import tiny_bert_config
from trainer import lt_sft
from trainer.models import mlm_loss, untie_and_freeze_decoder

L1 = 0.1


def tiny_mlm() -> BertForMaskedLM:
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(vocab_size=500)).train()
    untie_and_freeze_decoder(model)
    lt_sft.freeze_layer_norms(model)
    return model


def batches(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 500, (4, 16), generator=gen)
        labels = torch.where(torch.rand(4, 16, generator=gen) < 0.3, ids, torch.full_like(ids, -100))
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


@torch.no_grad()
def plain_step_extras(trainable, maskable, reference, masks, n_total) -> float:
    """The obvious formulation: fresh tensors everywhere."""
    alpha = L1 / n_total
    distance = 0.0
    for name, p in trainable.items():
        d = p - reference[name]
        distance += float(d.abs().sum())
        p.grad = p.grad + d.sign() * alpha
    if masks is not None:
        for name, p in maskable.items():
            p.grad = torch.where(masks[name], p.grad, torch.zeros_like(p.grad))
    return distance


def run(model, steps: list[dict], masks, optimised: bool) -> list[float]:
    """A few steps of phase 1 (masks None) or phase 2, L1 on: as LtSftTrainer orders them."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    maskable = lt_sft.maskable_parameters(model)
    reference = lt_sft.snapshot(trainable)
    n_total = sum(p.numel() for p in model.parameters())
    selected = lt_sft.selected_indices(masks) if masks is not None else None
    scratch = lt_sft.Scratch()
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.01)
    torch.manual_seed(2)  # the same dropout draws for both formulations
    distances = []
    for batch in steps:
        mlm_loss(model, batch).backward()
        if optimised:
            distances.append(lt_sft.add_l1_gradient(trainable, reference, L1, n_total, scratch=scratch))
            if selected is not None:
                lt_sft.mask_gradients(maskable, selected, scratch)
        else:
            distances.append(plain_step_extras(trainable, maskable, reference, masks, n_total))
        torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
        opt.step()
        with torch.no_grad():
            if selected is not None and optimised:
                lt_sft.reimpose_frozen(maskable, selected, reference, scratch)
            elif masks is not None:
                for name, p in maskable.items():
                    p.copy_(torch.where(masks[name], p, reference[name]))
        opt.zero_grad(set_to_none=True)
    return distances


@pytest.mark.slow
def test_buffered_step_is_bit_identical_to_the_plain_formulation():
    model = tiny_mlm()
    steps = batches(4)
    # phase 1 (full, L1), then a mask from its deltas, then phase 2 from theta0 (L1, masked)
    theta0 = copy.deepcopy(model)
    run(model, steps, None, optimised=True)
    maskable = lt_sft.maskable_parameters(model)
    masks = lt_sft.select_mask(maskable, lt_sft.maskable_parameters(theta0), k=3000)
    for masked in (None, masks):
        a, b = copy.deepcopy(theta0), copy.deepcopy(theta0)
        dist_a = run(a, steps, masked, optimised=True)
        dist_b = run(b, steps, masked, optimised=False)
        assert dist_a == dist_b
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert torch.equal(pa, pb), name
        if masked is not None:
            ref = lt_sft.maskable_parameters(theta0)
            for name, p in lt_sft.maskable_parameters(a).items():
                assert torch.equal(p[~masks[name]], ref[name][~masks[name]]), name


def test_scratch_reuses_one_buffer_per_slot():
    scratch = lt_sft.Scratch()
    big, small = torch.zeros(100), torch.zeros(3, 4)
    first = scratch.take(0, big)
    assert scratch.shaped(0, small).shape == (3, 4)
    assert scratch.shaped(0, small).data_ptr() == first.data_ptr()  # the same memory, no new allocation
    assert scratch.take(1, small).data_ptr() != first.data_ptr()
