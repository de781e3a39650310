"""cluster.yaml and the KubeRay manifests, checked with Ray's own validators."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from fabric.workload import load_workload

ROOT = Path(__file__).resolve().parents[1]
IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def launcher_validate(config: dict) -> None:
    """What `ray up` does before it starts anything: fill in the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_ray_validation(cluster):
    launcher_validate(cluster)


def test_cluster_yaml_validation_catches_mistakes(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["max_wrokers"] = 8
    with pytest.raises(jsonschema.ValidationError, match="max_wrokers"):
        launcher_validate(broken)


def test_cluster_yaml_is_a_gpu_cluster_on_the_current_ray(cluster):
    assert cluster["provider"]["type"] == "aws"
    assert cluster["docker"]["image"] == IMAGE
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    worker = cluster["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] > 0
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))
    assert any("/home/ray/fabric" in cmd for cmd in cluster["setup_commands"])


def manifest(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "kuberay" / name).read_text())


def images(cluster_spec: dict) -> set[str]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}


def test_rayjob_runs_a_shipped_workload_with_a_valid_config():
    job = manifest("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("workloads.")
    config_at = argv.index("--config") + 1
    workload = load_workload(argv[2].removeprefix("workloads."))
    cfg = workload.load_config(ROOT / argv[config_at], argv[config_at + 1:])
    assert cfg.train.use_gpu is True
    assert len(images(job["spec"]["rayClusterSpec"])) == 1
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])


def test_rayservice_is_a_valid_serve_config_for_ray_serve_llm():
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    from ray.serve.schema import ServeDeploySchema

    service = manifest("rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    app = serve_config.applications[0]
    assert app.import_path == "ray.serve.llm:build_openai_app"
    llm = LLMConfig.model_validate(app.args["llm_configs"][0])
    assert llm.model_id and llm.accelerator_type


def test_dockerfile_builds_on_the_ray_gpu_image():
    dockerfile = (ROOT / "configs" / "kuberay" / "Dockerfile").read_text()
    assert f"FROM {IMAGE}" in dockerfile
