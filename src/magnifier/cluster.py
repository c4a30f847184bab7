"""Runs that span machines: the launch environments a multi-node run needs, and the SLURM
launcher's geometry.

Lightning starts the processes of one machine itself; across machines it joins processes that
something else started: SLURM (``srun``, as Hydra's submitit launcher does with
``hydra/launcher=slurm``), torchrun (``torchrun --nnodes=M ...``), or one command per node
with ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK`` set by hand. Without one of them a
``trainer.num_nodes > 1`` run would wait forever for peers that never come, so it is refused
before any data is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from magnifier.errors import UserError

#: torchrun's (torchelastic's) variables, as Lightning's TorchElasticEnvironment detects them.
TORCHRUN_VARS = ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
#: A node started by hand (Lightning's LightningEnvironment): the master's address and this node.
MANUAL_VARS = ("MASTER_ADDR", "NODE_RANK")


def launch_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """``"slurm"``, ``"torchrun"``, ``"manual"`` or None: who started this process.

    An interactive SLURM shell (``salloc``/``srun --pty bash``) does not count: Lightning does
    not treat it as a SLURM job either.
    """
    env = os.environ if environ is None else environ
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return "slurm"
    if all(k in env for k in TORCHRUN_VARS):
        return "torchrun"
    if all(k in env for k in MANUAL_VARS):
        return "manual"
    return None


def check_num_nodes(num_nodes, devices, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a multi-node geometry that nothing launched, or one that disagrees with SLURM's.

    Args:
        num_nodes: ``trainer.num_nodes``.
        devices: processes per node (``trainer.devices`` after ``trainer.gpus`` is mapped).
        environ: the environment (``os.environ`` by default).
    """
    if num_nodes is None or num_nodes == 1:
        return
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise UserError(f"trainer.num_nodes={num_nodes} is not a node count; use an integer >= 1")
    env = os.environ if environ is None else environ
    kind = launch_environment(env)
    if kind is None:
        raise UserError(
            f"trainer.num_nodes={num_nodes} but this process was not started by SLURM or torchrun; "
            f"submit with `-m hydra/launcher=slurm hydra.launcher.nodes={num_nodes}`, or run "
            f"`torchrun --nnodes={num_nodes} --nproc-per-node=<GPUs> -m magnifier.train ...` on every node "
            "(README: Clusters)"
        )
    if kind == "slurm" and "SLURM_NNODES" in env and int(env["SLURM_NNODES"]) != num_nodes:
        raise UserError(
            f"trainer.num_nodes={num_nodes} but the SLURM job has {env['SLURM_NNODES']} nodes; "
            f"set hydra.launcher.nodes and trainer.num_nodes to the same number"
        )
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    if kind == "slurm" and per_node.isdigit() and isinstance(devices, int) and int(per_node) != devices:
        raise UserError(
            f"trainer.gpus={devices} but SLURM starts {per_node} tasks per node; Lightning needs one task per GPU: "
            f"set hydra.launcher.tasks_per_node={devices} (the slurm launcher takes it from trainer.gpus)"
        )


def slurm_tasks_per_node(gpus) -> int:
    """SLURM tasks per node for ``trainer.gpus``: one per GPU (Lightning's SLURM environment
    expects as many tasks as devices), one for a CPU run."""
    gpus = int(gpus or 0)
    if gpus < 0:
        raise ValueError("trainer.gpus=-1 (all visible GPUs) cannot size a SLURM job: give the GPUs per node, "
                         "e.g. trainer.gpus=4")
    return max(gpus, 1)


def slurm_gpus_per_node(gpus) -> int | None:
    """SLURM's ``--gpus-per-node`` for ``trainer.gpus``: None (no GPU request) for a CPU run."""
    return slurm_tasks_per_node(gpus) if int(gpus or 0) > 0 else None
