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


def test_a_replica_holds_its_share_of_the_catalog_not_the_whole_budget():
    from service.scaleout.options import pair_capacity

    # 20 pairs on 2 replicas: 13 each (25% slack), though the plan budget holds 500.
    assert pair_capacity(budget_pairs=500, catalog_pairs=20, replicas=2) == 13
    # The budget still bounds a large catalog; a set cap wins over the share.
    assert pair_capacity(budget_pairs=6, catalog_pairs=20, replicas=2) == 6
    assert pair_capacity(budget_pairs=500, catalog_pairs=20, replicas=2, pairs_per_replica=4) == 4
    # One replica holds the whole catalog; an unknown catalog leaves the budget in charge.
    assert pair_capacity(budget_pairs=500, catalog_pairs=20, replicas=1) == 25
    assert pair_capacity(budget_pairs=500, catalog_pairs=0, replicas=2) == 500
    assert pair_capacity(budget_pairs=0, catalog_pairs=20, replicas=2) == 1


def test_the_catalog_counts_language_task_pairs():
    from service.scaleout.options import catalog_size

    langs, tasks = ["hau", "swa", "yor"], ["ner", "pos"]
    combos = [(lang, None) for lang in langs] + [(None, t) for t in tasks] + [(lang, t) for lang in langs for t in tasks]
    assert catalog_size(combos) == 6
    assert catalog_size([(lang, None) for lang in langs]) == 3
    assert catalog_size([]) == 0
