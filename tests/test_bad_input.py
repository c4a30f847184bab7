"""Batches the data cannot fill are refused in one line, exit code 2, before training starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from magnifier.errors import UserError

from .conftest import compose, tiny_overrides

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _datamodule(data_dir, tmp_path, *extra):
    return instantiate(compose(tiny_overrides(data_dir) + list(extra), output_dir=str(tmp_path)).dataset)


@pytest.mark.parametrize("batch, k, hint", [(30, 4, "dataset.batch_size=32"), (2, 4, "dataset.batch_size=4"),
                                            (16, 0, "is a whole number >= 1")])
def test_a_batch_that_is_not_p_times_k_is_refused_at_construction(tiny_data_dir, tmp_path, batch, k, hint):
    with pytest.raises(Exception) as err:
        _datamodule(tiny_data_dir, tmp_path, f"dataset.batch_size={batch}", f"dataset.num_instances={k}")
    cause = err.value if isinstance(err.value, UserError) else err.value.__cause__
    assert isinstance(cause, UserError) and hint in str(cause) and "\n" not in str(cause)


def test_k_above_most_identities_image_counts_and_p_above_the_identities(tiny_data_dir, tmp_path):
    # The tiny training split: 8 identities of 4 to 6 images each.
    dm = _datamodule(tiny_data_dir, tmp_path, "dataset.batch_size=16", "dataset.val_split=none", "dataset.num_instances=8")
    with pytest.raises(UserError, match=r"num_instances=8 but 8 of 8 training identities .* fewer than 8 images"):
        dm.check_sampling()
    _datamodule(tiny_data_dir, tmp_path, "dataset.batch_size=16", "dataset.val_split=none", "dataset.num_instances=4").check_sampling()
    dm = _datamodule(tiny_data_dir, tmp_path, "dataset.batch_size=36", "dataset.val_split=none", "dataset.num_instances=4")
    with pytest.raises(UserError, match=r"P=9 identities per batch, but 'synthetic' has 8 training identities; use dataset.batch_size <= 32"):
        dm.check_sampling()
    dm = _datamodule(tiny_data_dir, tmp_path, "dataset.batch_size=20", "dataset.val_split=none", "dataset.num_instances=4")
    dm.check_sampling(world_size=1)
    with pytest.raises(UserError, match=r"on each of 2 processes.*dataset.batch_size <= 16"):
        dm.check_sampling(world_size=2)


def test_the_command_says_it_in_one_line_and_exits_2(tiny_data_dir, tmp_path):
    run = subprocess.run([sys.executable, "-m", "magnifier.train", *tiny_overrides(tiny_data_dir), "dataset.batch_size=30",
                          f"paths.log_dir={tmp_path}", "logger=csv"], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: dataset.batch_size=30 is not P x K with K = dataset.num_instances=4; use a multiple of 4, "
        "e.g. dataset.batch_size=32")


def test_every_entry_point_gets_the_constructors_user_error_itself(tiny_data_dir, tmp_path):
    """train, evaluate and parse build the data module with instantiate_config: Hydra's
    wrapping is removed, so the one line reaches the user."""
    from magnifier.config import instantiate_config

    cfg = compose(tiny_overrides(tiny_data_dir) + ["dataset.batch_size=30"], output_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"^dataset.batch_size=30 is not P x K"):
        instantiate_config(cfg.dataset)
