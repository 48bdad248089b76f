"""The tune launcher on a multi-machine Vertex AI CustomJob: Vertex's CLUSTER_SPEC, as Vertex sets it on each
replica, becomes torch elastic's node count, node rank and rendezvous at the chief."""
import json

import pytest

from calltune.training.lora import launch_config, vertex_cluster

POOLS = {"workerpool0": ["cmle-training-workerpool0-1d-0:2222"],
         "workerpool1": ["cmle-training-workerpool1-1d-0:2222", "cmle-training-workerpool1-1d-1:2222"]}


def _env(task_type: str, index: int, pools=POOLS) -> dict:
    return {"CLUSTER_SPEC": json.dumps({"cluster": pools, "environment": "cloud", "job": "{}",
                                        "task": {"type": task_type, "index": index}})}


@pytest.mark.parametrize("task, rank", [(("workerpool0", 0), 0), (("workerpool1", 0), 1), (("workerpool1", 1), 2)])
def test_every_replica_finds_its_rank_and_the_chief(task, rank):
    cluster = vertex_cluster(_env(*task))
    assert cluster == (3, rank, "cmle-training-workerpool0-1d-0:2222")
    config = launch_config(4, cluster)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (3, 3, 4)
    assert config.rdzv_endpoint == "cmle-training-workerpool0-1d-0:2222"
    assert config.rdzv_configs["is_host"] is (rank == 0)
    assert config.run_id == launch_config(4, vertex_cluster(_env("workerpool0", 0))).run_id  # the same on every node


def test_one_machine_is_not_a_cluster():
    assert vertex_cluster({}) is None
    assert vertex_cluster(_env("workerpool0", 0, {"workerpool0": ["host-0:2222"]})) is None
    config = launch_config(2, None)
    assert (config.min_nodes, config.max_nodes, config.rdzv_endpoint) == (1, 1, "localhost:0")


@pytest.mark.parametrize("raw, needle", [("{not json", "CLUSTER_SPEC is not"),
                                         (json.dumps({"cluster": POOLS}), "CLUSTER_SPEC is not"),
                                         (json.dumps({"cluster": {**POOLS, "workerpool2": ["ps-0:2222"]},
                                                      "task": {"type": "workerpool2", "index": 0}}),
                                          "not a training worker")])
def test_a_broken_cluster_spec_is_named(raw, needle):
    with pytest.raises(ValueError, match=needle):
        vertex_cluster({"CLUSTER_SPEC": raw})
