"""Data: dataset readers, joint image + label-map transforms, the identity sampler, the data module."""

from .datamodule import ReIDDataModule
from .datasets import ImageRecord, ReIDData, load_dataset

__all__ = ["ImageRecord", "ReIDData", "ReIDDataModule", "load_dataset"]
