"""`shoal train --nproc N ...`: re-execute the same command under torchrun's elastic launcher.

torchrun (`torch.distributed.run`) starts one worker per process slot, runs the c10d rendezvous that lets nodes
find each other, and restarts the whole group after a failure (`--max-restarts`). Each worker runs the plain
`shoal train` command, which sees torchrun's environment and joins the process group.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from shoal.errors import ConfigError


@dataclass(frozen=True)
class LaunchSpec:
    nproc: int = 1  # processes on this node (one per GPU)
    nnodes: int = 1
    node_rank: int = 0
    rdzv: str = ""  # HOST:PORT of the rendezvous (any node's address; the same on every node)
    rdzv_id: str = "shoal"
    max_restarts: int = 0

    @property
    def needed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1 or self.max_restarts > 0

    def validate(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise ConfigError(f"--nproc ({self.nproc}) and --nnodes ({self.nnodes}) must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank must be in 0..{self.nnodes - 1}, got {self.node_rank}")
        if self.max_restarts < 0:
            raise ConfigError(f"--max-restarts must be >= 0, got {self.max_restarts}")
        if self.nnodes > 1 and not self.rdzv:
            raise ConfigError("a multi-node run needs --rdzv HOST:PORT, the same address on every node")
        if self.rdzv:
            host, _, port = self.rdzv.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--rdzv must look like HOST:PORT, got {self.rdzv!r}")


def torchrun_args(spec: LaunchSpec) -> list[str]:
    args = [f"--nproc-per-node={spec.nproc}", f"--max-restarts={spec.max_restarts}", "--monitor-interval=1"]
    if spec.rdzv:
        args += [f"--nnodes={spec.nnodes}", f"--node-rank={spec.node_rank}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={spec.rdzv}", f"--rdzv-id={spec.rdzv_id}"]
    else:
        args += ["--standalone"]  # one node: a private rendezvous on a free local port
    return args


def worker_env(spec: LaunchSpec) -> dict[str, str]:
    """The environment for torchrun."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        # torchrun would set 1 thread per process; on a CPU-only node that leaves most cores idle. The cores this
        # process may use, not the host's: under SLURM or a container they can be far fewer.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // spec.nproc))
    # A fresh key-value store for every rendezvous round: with the store shared across rounds, workers restarted
    # after a failure can read the dead workers' addresses from the previous round and fail to connect.
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    # On SIGTERM torchrun gives the workers this long to finish their step and write a checkpoint (default 30 s).
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "120")
    return env


def exec_torchrun(spec: LaunchSpec, worker_args: list[str]) -> None:
    """Replace this process with torchrun running `shoal <worker_args>` in every worker (does not return).

    Replacing rather than wrapping means Ctrl-C, SIGTERM and the exit status go straight to and from torchrun.
    """
    spec.validate()
    argv = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(spec), "-m", "shoal.cli", *worker_args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, worker_env(spec))
