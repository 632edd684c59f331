"""Static checks of the scale-out deployment files; no cluster, no Docker engine.

* deploy/k8s/*.yaml core objects (Deployment, Service, PersistentVolumeClaim) and the pod
  templates inside the RayService: the Kubernetes 1.30 OpenAPI schemas shipped by the
  ``kubernetes-validate`` package, strict (unknown fields fail).
* the RayService: the KubeRay ``ray.io/v1`` CRD's openAPIV3Schema, vendored in
  tests/schemas/kuberay-rayservice-v1.json (source commit and licence in its ``$comment``),
  made strict the same way (an object with listed properties admits no others).
* serve configs (deploy/ray/serve_config.yaml and the RayService's serveConfigV2): Ray
  Serve's own ``ServeDeploySchema``, their ``args`` as ScaleOutOptions, the import path.
* consistency: GPUs per worker pod vs per replica, the shared volume at CSFT_DATA_DIR on
  every Ray pod, REDIS_URL pointing at the Redis Service, the compose ``ray`` profile.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) is missing")
serve_schema = pytest.importorskip("ray.serve.schema", reason="ray[serve] is not installed")

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
SERVE_CONFIG = REPO / "deploy" / "ray" / "serve_config.yaml"
CRD_SCHEMA = Path(__file__).resolve().parent / "schemas" / "kuberay-rayservice-v1.json"
K8S_VERSION = "1.30.0"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def strict(schema):
    """Reject unknown fields wherever the schema lists an object's properties (the API
    server would silently prune them: a typo would deploy and do nothing)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def rayservice() -> dict:
    (doc,) = docs("rayservice.yaml")
    return doc


@pytest.fixture(scope="module")
def crd_validator():
    return jsonschema.Draft7Validator(strict(json.loads(CRD_SCHEMA.read_text())))


def test_vendored_crd_is_kuberay_rayservice():
    schema = json.loads(CRD_SCHEMA.read_text())
    assert "ray-project/kuberay" in schema["$comment"] and "Apache-2.0" in schema["$comment"]
    assert {"serveConfigV2", "rayClusterConfig"} <= set(schema["properties"]["spec"]["properties"])


@pytest.mark.parametrize("name", ["redis.yaml", "diffs-volume.yaml"])
def test_core_objects_match_kubernetes_schema(name):
    for doc in docs(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_rayservice_matches_kuberay_crd(rayservice, crd_validator):
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    errors = sorted(crd_validator.iter_errors(rayservice), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def test_crd_check_catches_mistakes(rayservice, crd_validator):
    typo = copy.deepcopy(rayservice)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 2
    wrong_type = copy.deepcopy(rayservice)
    wrong_type["spec"]["serveConfigV2"] = {"applications": []}
    for bad in (typo, wrong_type):
        assert list(crd_validator.iter_errors(bad))


def pod_templates(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def test_ray_pod_templates_match_kubernetes_pod_schema(rayservice):
    for template in pod_templates(rayservice):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "csft"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def serve_configs(rayservice: dict) -> dict[str, dict]:
    return {"serve_config.yaml": yaml.safe_load(SERVE_CONFIG.read_text()),
            "serveConfigV2": yaml.safe_load(rayservice["spec"]["serveConfigV2"])}


def test_serve_configs_match_ray_serve_schema_and_options(rayservice):
    from service.scaleout.options import ScaleOutOptions

    for name, config in serve_configs(rayservice).items():
        serve_schema.ServeDeploySchema.model_validate(config)
        (app,) = config["applications"]
        module, _, attr = app["import_path"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
        options = ScaleOutOptions(**app["args"])
        assert options.replicas >= 2 and options.max_replicas >= options.replicas, name
        assert config["http_options"]["port"] == 8000 and app["route_prefix"] == "/"


def test_serve_configs_agree_except_gpus(rayservice):
    configs = serve_configs(rayservice)
    local, cluster = (c["applications"][0]["args"] for c in configs.values())
    assert {**local, "replica_gpus": None} == {**cluster, "replica_gpus": None}
    assert cluster["replica_gpus"] == 1


def test_cluster_resources_fit_the_replicas(rayservice):
    args = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= args["replica_gpus"]
    assert group["maxReplicas"] * gpus >= args["max_replicas"] * args["replica_gpus"]
    assert group["replicas"] * gpus >= args["replicas"] * args["replica_gpus"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"], "the head runs the proxy and ingress only"


def test_every_ray_pod_shares_redis_and_the_diff_volume(rayservice):
    (claim,) = docs("diffs-volume.yaml")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    services = {d["metadata"]["name"]: d for d in docs("redis.yaml") if d["kind"] == "Service"}
    for template in pod_templates(rayservice):
        spec = template["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        for container in spec["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            url = urlsplit(env["REDIS_URL"])
            assert url.hostname in services and url.port == services[url.hostname]["spec"]["ports"][0]["port"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert claims[mounts[env["CSFT_DATA_DIR"]]] == claim["metadata"]["name"]


def test_compose_ray_profile():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = compose["services"]["service-ray"]
    assert svc["profiles"] == ["ray"] and svc["build"]["args"]["EXTRAS"] == "[ray]"
    command = svc["command"]
    assert command[0] == "serve" and int(command[command.index("--replicas") + 1]) >= 2
    gpus = int(command[command.index("--replica-gpus") + 1]) * int(command[command.index("--replicas") + 1])
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == gpus
    assert svc["environment"]["REDIS_URL"].startswith("redis://redis:")
