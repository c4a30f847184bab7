"""Clusters without a cluster: the multi-node refusal, the SLURM job that the launcher would
submit (sbatch replaced by a recorder), and a real submitit job run locally."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pytorch_lightning import Callback

from magnifier.cluster import check_num_nodes, launch_environment, slurm_gpus_per_node, slurm_tasks_per_node
from magnifier.config import trainer_kwargs
from magnifier.errors import UserError

from .conftest import compose, tiny_overrides

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
ROOT = Path(__file__).resolve().parents[1]


class SlowEpochs(Callback):
    """Sleeps ``seconds`` at the end of each training epoch, so that the job of the time-limit
    test is still training when its slot's signal comes on any machine: 14 tiny epochs alone
    can end within the 30 s before it (they did once on the reference machine)."""

    def __init__(self, seconds: float = 2.5):
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        time.sleep(self.seconds)


TORCHRUN = {"RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}
SLURM = {"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4(x2)"}


def test_launch_environment_is_told_apart():
    assert launch_environment({}) is None
    assert launch_environment(SLURM) == "slurm"
    assert launch_environment({**SLURM, "SLURM_JOB_NAME": "bash"}) is None  # an interactive shell
    assert launch_environment(TORCHRUN) == "torchrun"
    assert launch_environment({"MASTER_ADDR": "node0", "NODE_RANK": "1"}) == "manual"


def test_several_nodes_without_a_launcher_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"trainer.num_nodes=2 but this process was not started by SLURM or torchrun") as err:
        check_num_nodes(2, 4, environ={})
    assert "\n" not in str(err.value)
    check_num_nodes(1, 4, environ={})  # one machine needs nothing
    check_num_nodes(2, 4, environ=TORCHRUN)
    check_num_nodes(2, 4, environ=SLURM)
    with pytest.raises(UserError, match="SLURM job has 2 nodes"):
        check_num_nodes(3, 4, environ=SLURM)
    with pytest.raises(UserError, match="SLURM starts 4 tasks per node"):
        check_num_nodes(2, 2, environ=SLURM)
    with pytest.raises(UserError, match="not a node count"):
        check_num_nodes(0, 1, environ={})


def test_trainer_kwargs_check_nodes_before_anything_runs():
    base = {"gpus": 0, "accelerator": "cpu", "devices": 1, "num_nodes": 2}
    with pytest.raises(UserError, match="num_nodes=2"):
        trainer_kwargs(base, cuda_device_count=lambda: 0, environ={})
    assert trainer_kwargs(base, cuda_device_count=lambda: 0, environ=TORCHRUN)["num_nodes"] == 2
    gpu = {**base, "gpus": 4}
    assert trainer_kwargs(gpu, cuda_device_count=lambda: 4, environ=SLURM)["devices"] == 4
    with pytest.raises(UserError, match="num_nodes=2"):
        trainer_kwargs(gpu, cuda_device_count=lambda: 4, environ={})


def test_num_nodes_refusal_exits_2_before_reading_data(tmp_path):
    run = subprocess.run([sys.executable, "-m", "magnifier.train", "trainer.num_nodes=2", f"paths.data_dir={tmp_path / 'none'}",
                          f"paths.log_dir={tmp_path}"], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: trainer.num_nodes=2 but this process was not started")
    assert not (tmp_path / "none").exists()  # the synthetic set was not built: no data was touched


def test_slurm_geometry_follows_trainer_gpus():
    assert slurm_tasks_per_node(4) == 4 and slurm_gpus_per_node(4) == 4
    assert slurm_tasks_per_node(0) == 1 and slurm_gpus_per_node(0) is None
    with pytest.raises(ValueError, match="give the GPUs per node"):
        slurm_tasks_per_node(-1)


def test_slurm_launcher_composes_the_issue_command(tmp_path):
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.nodes=2", "trainer.gpus=4", "trainer.num_nodes=2",
                   "experiment=duke_paper", "hydra.launcher.partition=gpu"], output_dir=str(tmp_path))
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.partition == "gpu" and launcher.cpus_per_task == cfg.dataset.num_workers
    assert launcher.max_num_timeout > 0  # a job stopped at its time limit requeues
    # Without hydra.launcher.nodes, the node count comes from trainer.num_nodes.
    assert compose(["hydra/launcher=slurm", "trainer.num_nodes=3"], output_dir=str(tmp_path)).hydra.launcher.nodes == 3


FAKE_SBATCH = """#!/bin/sh
# Records the submission script instead of submitting it, then fails the submission.
cp "$1" "{out}"
echo "fake sbatch: recorded $1" >&2
exit 1
"""


def test_slurm_launcher_writes_the_job_lightning_expects(tmp_path):
    """The real launcher and submitit build the sbatch script; a stand-in sbatch keeps it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = tmp_path / "job.sh"
    (bindir / "sbatch").write_text(FAKE_SBATCH.format(out=script))
    (bindir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit looks for srun before it submits
    for tool in ("sbatch", "srun"):
        (bindir / tool).chmod(0o755)
    env = {**ENV, "PATH": f"{bindir}:{ENV['PATH']}"}
    subprocess.run([sys.executable, "-m", "magnifier.train", "-m", "hydra/launcher=slurm", "hydra.launcher.nodes=2",
                    "trainer.gpus=4", "trainer.num_nodes=2", "experiment=duke_paper", "hydra.launcher.partition=gpu",
                    "hydra.launcher.timeout_min=600", f"paths.log_dir={tmp_path / 'logs'}"],
                   env=env, capture_output=True, text=True, timeout=300)
    assert script.is_file(), "the launcher did not call sbatch"
    text = script.read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)", text, flags=re.M))
    assert sbatch["nodes"] == "2" and sbatch["ntasks-per-node"] == "4" and sbatch["gpus-per-node"] == "4"
    assert sbatch["partition"] == "gpu" and sbatch["time"] == "600" and sbatch["mem"] == "64GB"
    assert sbatch["signal"] == "USR2@120"  # time to save before the limit
    assert re.search(r"^srun .*submitit", text, flags=re.M)  # one task per GPU, started by srun


def test_submitit_local_launcher_trains(tiny_data_dir, tmp_path):
    """Hydra's submitit launcher, local executor: a real job that trains two steps."""
    logs = tmp_path / "logs"
    run = subprocess.run([sys.executable, "-m", "magnifier.train", "-m", "hydra/launcher=submitit_local",
                          *tiny_overrides(tiny_data_dir), f"paths.log_dir={logs}", "logger=csv", "trainer.max_epochs=1",
                          "+trainer.limit_train_batches=2", "test=false", "~callbacks.progress_bar"],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    sweeps = list((logs / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    job = sweeps[0] / "0"
    assert (job / "checkpoints" / "last.ckpt").is_file()
    assert list((sweeps[0] / ".submitit").glob("*/*_log.out"))  # submitit ran it as a job


def test_submitit_job_stopped_at_its_time_limit_saves_requeues_and_resumes(tiny_data_dir, tmp_path):
    """submitit's local executor signals a job (USR2) 30 s before its time limit, as SLURM does
    with --signal: the run saves last.ckpt, submitit requeues it, and the requeued job continues
    from that checkpoint in its own folder until training is done."""
    logs = tmp_path / "logs"
    run = subprocess.run([sys.executable, "-m", "magnifier.train", "-m", "hydra/launcher=submitit_local",
                          # A 1-minute slot on a loaded machine is mostly start-up: allow as many requeues
                          # as the SLURM launcher does (submitit's local default is 3, which ran out under load).
                          "hydra.launcher.timeout_min=1", "+hydra.launcher.max_num_timeout=20",
                          *tiny_overrides(tiny_data_dir), f"paths.log_dir={logs}",
                          "dataset.batch_size=8", "trainer.max_epochs=14", "trainer.check_val_every_n_epoch=7",
                          "test=false", "logger=csv", "~callbacks.progress_bar",
                          "+callbacks.slow_epochs._target_=tests.test_cluster.SlowEpochs"],
                         env={**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), ENV.get("PYTHONPATH")]))},
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    job = next((logs / "train" / "multiruns").iterdir()) / "0"
    log = "".join(p.read_text() for p in job.parent.glob(".submitit/*/*_0_log.out"))
    saves = re.findall(r"SIGTERM: saved (\S+) at step (\d+)", log)
    assert saves, "the job finished before its time limit: nothing was requeued"
    assert all(Path(path) == job / "checkpoints" / "last.ckpt" for path, _ in saves)
    assert "Requeued job" in log and "resuming this run from" in log
    import json

    import torch

    assert json.loads((job / "metrics.json").read_text())["status"] == "finished"
    final = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # As many steps as 14 whole epochs: the resumed epochs started where the stopped ones ended.
    # The saved epoch is 13, or 14 when the signal came after the last epoch's last batch (Lightning
    # counts that epoch complete before it checks for the signal; the requeued job then has nothing
    # left to train, which a loaded machine makes likely).
    from hydra.utils import instantiate

    from .conftest import compose

    datamodule = instantiate(compose(tiny_overrides(tiny_data_dir) + ["dataset.batch_size=8"], output_dir=str(tmp_path)).dataset)
    datamodule.setup("fit")
    assert final["epoch"] in (13, 14) and final["global_step"] == 14 * len(datamodule.train_dataloader())


@pytest.mark.multiprocess
def test_two_nodes_under_torchrun_train_together(tiny_data_dir, tmp_path):
    """The README's multi-node command, with two 'nodes' of one CPU process on this machine."""
    torchrun = Path(sys.executable).with_name("torchrun")
    common = [*tiny_overrides(tiny_data_dir), "trainer.num_nodes=2", "trainer.accelerator=cpu", "trainer.devices=1",
              "trainer.strategy=ddp", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv", "trainer.max_epochs=1",
              "+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1", "test=false", "~callbacks.progress_bar",
              "dataset.batch_size=8"]  # P=2 on each node: 6 training identities after the validation split
    nodes = [subprocess.Popen([str(torchrun), "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
                               "--master-addr=127.0.0.1", "--master-port=29531", "-m", "magnifier.train", *common],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, out[-3000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in out
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
