"""Closing a distributed run: the process group is destroyed by the program, not at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from magnifier.distributed import close_process_group

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "ddp_exit.py"


def test_close_without_a_process_group_is_a_no_op():
    assert close_process_group() is False


def _ddp_exit(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(BENCH), "--mode", "gloo", *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.multiprocess
def test_gloo_work_in_flight_at_exit_no_longer_aborts():
    """Two processes queue 200 asynchronous all-reduces, wait for the 100th, call
    close_process_group() and exit: both exit 0. Without the call about 9 runs in 10 abort with
    'terminate called without an active exception' (the slow test below shows it)."""
    run = _ddp_exit("--runs", "2")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "aborted at exit: 0 of 2" in run.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_without_closing_the_same_program_aborts():
    """The control: the same program leaving the group to the interpreter aborts (SIGABRT)."""
    run = _ddp_exit("--runs", "5", "--no-close")
    assert run.returncode == 1
    assert "aborted at exit: 0 of 5" not in run.stdout, run.stdout
