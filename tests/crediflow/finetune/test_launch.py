"""The torchrun launch of several processes: the arguments it builds (as torchrun's own parser
reads them, with the rendezvous from the PET_ variables), when a program starts one, and the
launches it refuses before anything starts. The launch itself runs in
tests/crediflow/models/test_training_ddp.py and tests/tasks/test_finetune_stage.py."""

from __future__ import annotations

import os

import pytest

from crediflow.errors import ConfigError
from crediflow.finetune import FinetuneConfig, check_launch, launch_args, launched, wants_launch


def _torchrun(args: list[str], monkeypatch, **env: str):
    """torchrun's parsed arguments for `args` with `env` (and no other PET_ variable)."""
    from torch.distributed.run import get_args_parser

    for name in [n for n in os.environ if n.startswith("PET_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return get_args_parser().parse_args(args)


def test_one_machine_is_a_standalone_launch_of_the_module(monkeypatch):
    args = launch_args(["-m", "tasks.finetune"], processes=4)
    assert args == ["--standalone", "--nproc-per-node=4", "-m", "tasks.finetune"]
    parsed = _torchrun(args, monkeypatch)
    assert parsed.standalone and parsed.nproc_per_node == "4" and parsed.nnodes == "1:1"
    assert parsed.module and parsed.training_script == "tasks.finetune"
    assert parsed.training_script_args == []


def test_several_machines_take_the_rendezvous_from_the_environment(monkeypatch):
    args = launch_args(["script.py", "--flag", "x"], processes=2, machines=3)
    assert args == ["--nnodes=3", "--nproc-per-node=2", "script.py", "--flag", "x"]
    parsed = _torchrun(args, monkeypatch, PET_MASTER_ADDR="10.0.0.1", PET_MASTER_PORT="29511",
                       PET_NODE_RANK="2")
    assert not parsed.standalone and parsed.nnodes == "3" and parsed.rdzv_backend == "static"
    assert (parsed.master_addr, parsed.master_port, parsed.node_rank) == ("10.0.0.1", 29511, 2)
    assert parsed.training_script == "script.py"
    assert parsed.training_script_args == ["--flag", "x"]
    with pytest.raises(ValueError, match="at least one process"):
        launch_args(["x.py"], processes=0)


@pytest.mark.parametrize(("processes", "machines", "env", "expected"), [
    (1, 1, {}, False),
    (2, 1, {}, True),
    (1, 2, {}, True),
    (2, 1, {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, False),  # one of the launched processes
    (2, 1, {"LOCAL_RANK": "0"}, False),
])
def test_a_launch_is_wanted_for_several_processes_outside_of_one(processes, machines, env,
                                                                 expected):
    assert wants_launch(processes, machines, env) is expected
    assert launched(env) is bool(env)


@pytest.mark.parametrize(("processes", "machines", "env", "gpus", "key", "words"), [
    (3, 1, {}, 2, "processes", "3 processes per machine, but this machine has 2 GPUs"),
    (2, 2, {}, 0, "machines", "PET_MASTER_ADDR"),
    (2, 2, {"PET_MASTER_ADDR": ""}, 0, "machines", "PET_NODE_RANK"),
])
def test_a_launch_that_cannot_start_is_refused_naming_the_key(processes, machines, env, gpus,
                                                              key, words):
    with pytest.raises(ConfigError, match=words) as info:
        check_launch(processes, machines, env=env, gpus=gpus)
    assert (info.value.section, info.value.key) == ("finetune", key)


@pytest.mark.parametrize(("processes", "machines", "env", "gpus"), [
    (2, 1, {}, 2),
    (4, 1, {}, 0),  # no GPU: CPU processes (gloo)
    (2, 2, {"PET_MASTER_ADDR": "10.0.0.1"}, 2),
    (1, 2, {"PET_RDZV_ENDPOINT": "10.0.0.1:29400"}, 8),
])
def test_a_launch_that_can_start_passes(processes, machines, env, gpus):
    check_launch(processes, machines, env=env, gpus=gpus)


@pytest.mark.parametrize(("values", "key", "message"), [
    ({"processes": 0}, "processes", "out of range; allowed: >= 1"),
    ({"processes": 2.5}, "processes", "expected int"),
    ({"machines": 0}, "machines", "out of range; allowed: >= 1"),
    ({"machines": "two"}, "machines", "expected int"),
])
def test_bad_process_counts_name_the_key(values, key, message):
    assert (FinetuneConfig().processes, FinetuneConfig().machines) == (1, 1)
    with pytest.raises(ConfigError, match=message) as info:
        FinetuneConfig.from_mapping(values)
    assert (info.value.section, info.value.key) == ("finetune", key)
