import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A tiny BERT saved as a Hugging Face model directory (weights, config, tokenizer)."""
    from service_fixtures import make_base_dir

    return make_base_dir(tmp_path_factory.mktemp("base") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_diffs(tiny_base_dir):
    """{(kind, key): bytes}: 5 language diffs with MLM heads and 4 task diffs (ner, pos, nli, qa)."""
    from service_fixtures import make_diffs

    return make_diffs(tiny_base_dir)
