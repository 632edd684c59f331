"""Files laid out exactly as the real producers write them, made inside the tests.

* Base checkpoints as Hugging Face saves them: from ``*ForMaskedLM`` (an MLM head whose
  decoder is tied to the input embeddings, so not stored, and **no pooler**, like
  xlm-roberta-base) or from ``*Model`` (a pooler, no head), with a real tokenizer.
* composable-sft's ``pytorch_diff.bin`` as its ``SFT.save`` writes it, from an ``SFT`` that
  was filled the way its trainer fills one (``SparseFineTuner.sft``) after the model was set
  up the way its ``run_mlm.py`` / ``run_token_classification.py`` set it up
  (``--freeze_layer_norm --freeze_decoder``; maskable = encoder parameters that train).
  Training itself is replaced by seeded perturbations of what would train.
* ``ReferenceSFT.apply``: the reference's own composition semantics (a dense ``+=`` of the
  sparse COO delta, ``copy_`` of "abs"), the ground truth our import, merge and service are
  compared against.

Written for these tests from the reference's behaviour (cambridgeltl/composable-sft,
``src/sft/sft.py``, ``src/sft/trainer.py``, ``examples/language-modeling/run_mlm.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    BertTokenizerFast,
    PreTrainedModel,
    XLMRobertaTokenizerFast,
)

from tests.support import tiny_bert_config, tiny_xlmr_config

WORDS = (
    "the a of and in to is was for on with as by at from his her it that this john mary paris "
    "london kano lagos nairobi abuja google bank city river news said president went visited"
).split()
REFERENCE_FILE = "pytorch_diff.bin"
OUTPUT_BIAS = ("cls.predictions.bias", "lm_head.bias")  # the MLM head's vocabulary bias


# -- base checkpoints ---------------------------------------------------------------------


def _bert_tokenizer(root: Path):
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(special + WORDS)}, do_lower_case=True)


def _xlmr_tokenizer(root: Path):
    """A SentencePiece-style Unigram tokenizer with XLM-R's special tokens and ids."""
    special = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = special + [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [("▁", -3.0), ("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
        cls_token="<s>", pad_token="<pad>", mask_token="<mask>",
    )


ARCHS = {"bert": (tiny_bert_config, _bert_tokenizer), "xlmr": (tiny_xlmr_config, _xlmr_tokenizer)}


def save_checkpoint(root: Path, arch: str, saved_from: str, seed: int = 0) -> Path:
    """A base checkpoint directory: ``saved_from`` is "mlm" (``*ForMaskedLM``: head, no
    pooler) or "model" (``*Model``: pooler, no head)."""
    make_config, make_tokenizer = ARCHS[arch]
    tokenizer = make_tokenizer(root)
    torch.manual_seed(seed)
    model_cls = AutoModelForMaskedLM if saved_from == "mlm" else AutoModel
    model = model_cls.from_config(make_config(vocab_size=len(tokenizer)))
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


# -- the reference's SFT ----------------------------------------------------------------


def encode_sparse_tensor(tensor: torch.Tensor) -> dict:
    """``SFT.save``'s encoding of one coalesced sparse tensor: flat column-major indices
    (first dimension fastest), sorted, gap-coded with the first step a numpy int64 scalar
    and the rest Python ints, ``size`` a ``torch.Size`` and values in that order."""
    multipliers = np.cumprod([1] + list(tensor.size())[:-1], dtype=np.int64)
    flat = np.matmul(multipliers, tensor.indices().numpy().astype(np.int64))
    perm = sorted(range(len(flat)), key=lambda i: flat[i])
    flat = flat[perm]
    steps = (flat[1:] - flat[:-1]).tolist()
    if len(flat):
        steps = [flat[0]] + steps
    return {"size": tensor.size(), "index_steps": steps, "values": tensor.values()[perm]}


class ReferenceSFT:
    """composable-sft's ``SFT``: sparse ``diffs`` and dense ``abs``, saved and applied as it does."""

    def __init__(self) -> None:
        self.diffs: dict[str, torch.Tensor] = {}
        self.abs: dict[str, torch.Tensor] = {}

    def add_param(self, name: str, tensor: torch.Tensor, diff: bool = True) -> None:
        if diff:
            self.diffs[name] = tensor.to_sparse().coalesce()
        else:
            self.abs[name] = tensor.to("cpu")  # on CPU this is the nn.Parameter itself

    def save(self, save_dir: Path) -> Path:
        tensors = {"diffs": {n: encode_sparse_tensor(p) for n, p in self.diffs.items()}, "abs": self.abs}
        path = Path(save_dir) / REFERENCE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, path)
        return path

    @torch.no_grad()
    def apply(self, model: nn.Module, with_abs: bool = True) -> None:
        for name, diff in self.diffs.items():
            tensor = model.get_parameter(name)
            tensor += diff
        if with_abs:
            for name, value in self.abs.items():
                model.get_parameter(name).copy_(value)


# -- how the reference's trainer fills an SFT ------------------------------------------------


def freeze_decoder(model: PreTrainedModel) -> None:
    """run_mlm ``--freeze_decoder``: the decoder becomes a frozen, untied copy of theta0's
    input embeddings."""
    emb = model.base_model.embeddings.word_embeddings.weight
    decoder = model.cls.predictions.decoder if model.base_model_prefix == "bert" else model.lm_head.decoder
    decoder.weight = nn.Parameter(torch.zeros_like(emb).copy_(emb))
    decoder.weight.requires_grad = False


def freeze_layer_norm(model: nn.Module) -> None:
    """``--freeze_layer_norm``: names containing "LayerNorm" (RoBERTa's ``lm_head.layer_norm``
    does not match, so it trains)."""
    for n, p in model.named_parameters():
        if "LayerNorm" in n:
            p.requires_grad = False


@torch.no_grad()
def train_like_reference(model: PreTrainedModel, seed: int, density: float = 0.1, eps: float = 1e-7) -> ReferenceSFT:
    """Perturb what the reference trains (a random ``density`` of each maskable tensor, the
    whole of every other trainable tensor), then fill an SFT as ``SparseFineTuner.sft`` does."""
    gen = torch.Generator().manual_seed(seed)
    maskable = {n for n, p in model.named_parameters() if n.startswith(model.base_model_prefix) and p.requires_grad}
    original = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        noise = torch.randn(p.shape, generator=gen) * 0.05
        if n in maskable:
            noise *= torch.rand(p.shape, generator=gen) < density
        p.add_(noise)
    sft = ReferenceSFT()
    for n, p in model.named_parameters():
        if n in maskable:
            delta = p - original[n]
            sft.add_param(n, delta * (delta.abs() > eps), diff=True)
        elif p.requires_grad:
            sft.add_param(n, p, diff=False)
    return sft


def language_sft(checkpoint: Path, seed: int, head: str = "trained") -> ReferenceSFT:
    """A language SFT as run_mlm with ``--freeze_layer_norm --freeze_decoder`` saves it.

    ``head``: "trained" (every head tensor that trains), "bias" (only the head bias trained),
    "none" (the head frozen: no ``abs`` at all).
    """
    model = AutoModelForMaskedLM.from_pretrained(checkpoint, dtype=torch.float32)
    freeze_decoder(model)
    freeze_layer_norm(model)
    trains = {"trained": lambda n: True, "bias": lambda n: n in OUTPUT_BIAS, "none": lambda n: False}[head]
    prefix = model.base_model_prefix + "."
    for n, p in model.named_parameters():
        if not n.startswith(prefix) and not trains(n):
            p.requires_grad = False
    return train_like_reference(model, seed)


def task_sft(checkpoint: Path, model_cls, num_labels: int, seed: int) -> ReferenceSFT:
    """A task SFT as run_token_classification / run_text_classification save it
    (``--freeze_layer_norm``; the classifier is trained densely and saved in ``abs``)."""
    torch.manual_seed(seed)  # the fresh classifier
    model = model_cls.from_pretrained(checkpoint, num_labels=num_labels, dtype=torch.float32)
    freeze_layer_norm(model)
    return train_like_reference(model, seed)


def hub_cache_entry(cache: Path, repo_id: str, file: Path, revision: str = "0" * 40) -> Path:
    """Lay out ``file`` in a Hugging Face hub cache as ``hf_hub_download`` leaves it, so an
    offline download of ``repo_id`` finds it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    target = snapshot / REFERENCE_FILE
    target.write_bytes(file.read_bytes())
    return target


def environment_for(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
