"""Scale-out pieces that need no Ray instance: pair ids, options, the CLI's refusals."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[ray]')")

from service.cli import app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.scaleout.options import ScaleOutOptions, settings_args  # noqa: E402
from service.scaleout.pairs import pair_id, parse_pair_id  # noqa: E402


@pytest.mark.parametrize("pair", [("hau", "ner"), ("hau", None), (None, "ner"), ("pt-br", "ner-news")])
def test_pair_id_round_trips(pair):
    assert parse_pair_id(pair_id(*pair)) == pair


def test_fixed_and_autoscaled_deployment_options():
    fixed = ScaleOutOptions(replicas=3, replica_gpus=1).model_deployment_options()
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    auto = ScaleOutOptions(replicas=2, min_replicas=1, max_replicas=5, target_ongoing_requests=3).model_deployment_options()
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 2, "max_replicas": 5,
                                          "target_ongoing_requests": 3}
    with pytest.raises(ValueError):
        ScaleOutOptions(replicas=6, max_replicas=5)


def test_replica_settings_take_one_thread_per_cpu_and_keep_secrets(tmp_path):
    options = ScaleOutOptions(replica_cpus=2, settings=settings_args(Settings(admin_token="s3", data_dir=tmp_path)))
    replica = options.replica_settings()
    assert replica.torch_threads == 2 and replica.admin_token.get_secret_value() == "s3"
    assert replica.data_dir == tmp_path.resolve()


def test_build_app_refuses_without_a_shared_registry(monkeypatch):
    from service.scaleout.app import build_app

    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="REDIS_URL"):
        build_app({"settings": {"redis_url": None}})


def test_cli_refuses_bad_scaling_options():
    result = CliRunner().invoke(app, ["serve", "--replicas", "3", "--max-replicas", "2"])
    assert result.exit_code == 2
    assert "bad scaling options" in result.output
