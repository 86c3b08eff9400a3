"""Fine-tuning on several processes (GPUs of one machine, or several machines) through
torch's own launcher, torchrun (`torch.distributed.run`).

A program that is asked for more than one process and is not yet inside a launch starts
itself again through torchrun: `processes` copies per machine, on `machines` machines. Each
copy finds its rank in the environment torchrun gives it (`RANK`, `LOCAL_RANK`,
`WORLD_SIZE`) and transformers' Trainer does the data-parallel training (DDP) itself; see
crediflow/models/training.py for what makes the steps equal to one process's.

One machine: a standalone rendezvous on a free local port (`torchrun --standalone`). Several
machines: torchrun's static rendezvous, whose address and this machine's rank come from the
environment of each machine, in torchrun's own variables: `PET_MASTER_ADDR`,
`PET_MASTER_PORT` (default 29500) and `PET_NODE_RANK` (0 on the machine that writes the
outputs). Any other torchrun option can be set the same way (`PET_<OPTION>`, e.g.
`PET_RDZV_BACKEND=c10d` with `PET_RDZV_ENDPOINT`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence

from crediflow.errors import ConfigError

# What torchrun sets in the environment of every process it starts
LAUNCH_ENV = ("WORLD_SIZE", "LOCAL_RANK")
# The environment that names the rendezvous of several machines (torchrun's PET_ variables)
RENDEZVOUS_ENV = ("PET_MASTER_ADDR", "PET_RDZV_ENDPOINT")
# The signals torchrun's agent takes over while its processes run (restored afterwards)
_AGENT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP",
                                                          "SIGQUIT") if hasattr(signal, name))


def launched(env: Mapping[str, str] | None = None) -> bool:
    """True inside a torchrun launch (any number of processes)."""
    env = os.environ if env is None else env
    return any(env.get(name) for name in LAUNCH_ENV)


def wants_launch(processes: int, machines: int = 1, env: Mapping[str, str] | None = None
                 ) -> bool:
    """True when more than one process is asked for and this is not one of them yet."""
    return (processes > 1 or machines > 1) and not launched(env)


def launch_args(program: Sequence[str], *, processes: int, machines: int = 1) -> list[str]:
    """torchrun's arguments that start `program` (e.g. `["-m", "tasks.finetune"]`, or a
    script and its arguments) `processes` times on each of `machines` machines."""
    if processes < 1 or machines < 1:
        raise ValueError(f"need at least one process and one machine, got {processes} and "
                         f"{machines}")
    where = ["--standalone"] if machines == 1 else [f"--nnodes={machines}"]
    return [*where, f"--nproc-per-node={processes}", *program]


def check_launch(processes: int, machines: int = 1, *, section: str = "finetune",
                 env: Mapping[str, str] | None = None, gpus: int | None = None) -> None:
    """Refuse a launch that cannot start, before any work: more processes per machine than
    the machine has GPUs (`gpus`, when it has any), or several machines without a
    rendezvous address in the environment. The ConfigError names `section` and the key."""
    env = os.environ if env is None else env
    if gpus is None:
        gpus = _gpu_count()
    if gpus and processes > gpus:
        raise ConfigError(f"{processes} processes per machine, but this machine has {gpus} "
                          f"GPU{'s' if gpus != 1 else ''}: one process per GPU at most",
                          section=section, key="processes")
    if machines > 1 and not any(env.get(name) for name in RENDEZVOUS_ENV):
        raise ConfigError(f"{machines} machines need the rendezvous in the environment of "
                          "each machine: PET_MASTER_ADDR (the machine with node rank 0), "
                          "PET_MASTER_PORT and PET_NODE_RANK (0, 1, ...), torchrun's variables",
                          section=section, key="machines")


def launch(program: Sequence[str], *, processes: int, machines: int = 1) -> int:
    """Run `program` through torchrun (in this process: torch's elastic agent starts and
    watches the copies) and wait; return 0, or the exit status of the copy that failed first
    (128 + the signal for one killed by a signal), so that a refused input (65) stays 65.

    On the CPU each copy gets an equal share of the cores (OMP_NUM_THREADS, unless set).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(launch_args(program, processes=processes,
                                                    machines=machines))
    handlers = {sig: signal.getsignal(sig) for sig in _AGENT_SIGNALS}
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads is None:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // processes))
    try:
        run(args)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        code = int(failure.exitcode)
        return code if code > 0 else 128 - code if code < 0 else 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
