import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Serving defaults to CSFT_DTYPE=auto (bf16 on CPUs with native bf16): the tests compare
# answers with float32 references, so they pin float32 unless a test chooses a dtype itself
# (tests/test_patcher.py covers all three; tests/test_demo.py starts the server on auto).
os.environ.setdefault("CSFT_DTYPE", "float32")


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


@pytest.fixture()
def app_client(tiny_base_dir, tmp_path):
    """The real app in-process (TestClient), embedded Redis, the tiny base, small limits."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings
    from service_fixtures import TOKEN

    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", admin_token=TOKEN, device="cpu",
                        max_inputs=4, max_seq_len=16, max_input_chars=200)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture()
def loaded(app_client, tiny_diffs):
    """``app_client`` with every diff of ``tiny_diffs`` uploaded."""
    from service_fixtures import post_diff

    for data in tiny_diffs.values():
        assert post_diff(app_client, data).status_code == 201
    return app_client
