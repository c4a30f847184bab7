"""The LightningDataModule: P x K training batches with label maps, a validation split held out from
the training identities, and the test split's query + gallery."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader

from magnifier.errors import UserError

from . import packing
from .dataset import MissingAttributesError, ReIDImageDataset, unreadable_files
from .files import label_map_problems
from .datasets import ReIDData, combine_train, load_dataset
from .datasets.holdout import VAL_SPLITS, hold_out_validation, validation_count
from .samplers import EPOCH_MODES, RandomIdentitySampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, erasing_fill_value, normalize_on_device


class ReIDDataModule(pl.LightningDataModule):
    """Images plus precomputed part label maps for one ReID dataset.

    Training batches are dicts: ``image`` (N, 3, H, W) float, ``mask`` (N, H, W) long part labels,
    ``pid`` (N,), ``camid`` (N,), ``index`` (N,), ``path`` (list of N str), with N = P x K from
    :class:`RandomIdentitySampler`. The evaluation loaders yield query then gallery images (no
    masks) with an extra ``is_query`` (N,) bool: the validation loader those of the split held out
    from the training identities (``val_split=holdout``; no validation with ``none``), the test
    loader those of the dataset's own query and gallery, which nothing during training reads. With ``attributes`` set, training batches also
    carry ``attributes`` (N, A) float: each image's identity-level binary attribute vector.
    With ``normalize_on_device`` the training loader hands over ``image`` and ``mask`` as uint8
    (and ``erase`` boxes); :meth:`on_after_batch_transfer` gives the model the above.

    Args:
        name: the dataset's config name (``synthetic``, ``market``, ``duke``).
        root: the dataset folder or a parent that holds it under its official name.
        val_split: ``holdout``: ``val_identities`` training identities leave training and form
            the validation query and gallery (:mod:`magnifier.data.datasets.holdout`), on which
            checkpoints and sweeps choose; ``none``: train on every identity, no validation.
        val_identities: how many identities to hold out: a count (e.g. 100) or a fraction of
            the training identities (e.g. 0.1); drawn with ``seed``.
        height, width: network input size.
        num_instances: K, images per identity in a batch; ``batch_size`` = P x K.
        sampler_epoch: the identity sampler's epoch definition (``RandomIdentitySampler(epoch_mode=)``):
            ``pad`` (leftover images of an identity padded into a last chunk, fixed epoch length) or
            ``drop`` (the authors' sampler: leftovers dropped, the epoch ends when fewer than P
            identities have chunks left, so it is shorter and its length varies per epoch).
        erasing_fill: what random erasing writes into the normalised training image: ``authors``
            (the raw numbers of ``mean``, as the authors' code), ``zero`` (the mean pixel) or 3
            numbers; see :func:`magnifier.data.transforms.erasing_fill_value`.
        normalize_on_device: training images leave the loader workers as uint8 with their random
            erasing box, and are normalised (and the box filled) on the training device after the
            copy (:meth:`on_after_batch_transfer`): 4x fewer bytes pinned and copied, less work in
            the workers, the same numbers to rounding. ``auto`` (default): on when training on a
            CUDA device; ``true``/``false`` force it. Evaluation images are always float.
        sharing_strategy: how loader workers hand batches to the training process
            (``torch.multiprocessing.set_sharing_strategy``, set when loaders with workers are
            made): ``file_system`` (default: shared memory by name, no per-tensor socket
            handshake), ``file_descriptor`` (PyTorch's Linux default) or None (left as it is).
        prefetch_factor: batches each loader worker keeps ready (None: PyTorch's 2); with N
            workers, N x prefetch_factor batches wait in memory (pinned on a GPU).
        use_masks: read part label maps for training (the parsing head, SRB and SFB need them).
        eval_masks: also read query/gallery label maps (for ``model.gt_masks_at_test``, analysis only).
        mask_scheme: the label set the maps are written in (``conf/masks/``: eanet, lip,
            pascal_person_part, atr), remapped into the 8 parts.
        missing_masks: ``error`` (stop at set-up, naming the images) or ``stripes``
            (horizontal-stripe pseudo-parts for training images without a map).
        empty_masks: ``keep`` (an all-background map trains as it is) or ``stripes`` (treated
            like a missing map: what ``python -m magnifier.parse`` writes where it found no person).
        on_bad_image: ``replace`` (default): training images or label maps that cannot be decoded
            are reported at set-up (a fast header scan) and, when drawn, replaced by another image
            of the same identity (counted in ``train/bad_images``); ``error`` stops instead.
        options: reader options (``folder``: ``csv``, a CSV of path,pid,camid,split).
        train: train on the union of these datasets' training splits (e.g. ``[market, duke]``,
            each found under ``root``), pids offset per dataset; ``name`` gives query and gallery.
        synthetic: generator parameters; the synthetic dataset is built in ``prepare_data`` when
            it is missing or was built with other parameters.
        attributes: Lin et al.'s ``market_attribute.mat`` / ``duke_attribute.mat`` (a relative
            path is read from the dataset folder) for the model's attribute branch; see
            :mod:`magnifier.data.attributes` for the binary vector (30 bits Market, 23 Duke).
    """

    def __init__(
        self,
        name: str = "synthetic",
        root: str = "data",
        val_split: str = "holdout",
        val_identities: int | float = 0.1,
        height: int = 128,
        width: int = 64,
        batch_size: int = 64,
        num_instances: int = 4,
        test_batch_size: int = 128,
        num_workers: int = 2,
        flip_p: float = 0.5,
        pad: int = 10,
        erasing_p: float = 0.5,
        erasing_fill: str | list[float] = "authors",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        use_masks: bool = True,
        eval_masks: bool = False,
        seed: int = 0,
        synthetic: dict[str, Any] | None = None,
        attributes: str | None = None,
        mask_scheme: str = "eanet",
        missing_masks: str = "error",
        on_bad_image: str = "replace",
        empty_masks: str = "keep",
        options: dict[str, Any] | None = None,
        train: list[str] | None = None,
        sampler_epoch: str = "pad",
        normalize_on_device: bool | str = "auto",
        sharing_strategy: str | None = "file_system",
        prefetch_factor: int | None = None,
    ):
        super().__init__()
        self.name, self.root = name, str(root)
        if val_split not in VAL_SPLITS:
            raise UserError(f"dataset.val_split={val_split!r}: use holdout (validation identities taken out of "
                            "training, on which checkpoints are chosen) or none (train on all, test the last weights)")
        self.val_split, self.val_identities = val_split, val_identities
        if val_split == "holdout":
            validation_count(val_identities, 2)  # a malformed value fails here, before any data is read
        self.height, self.width = height, width
        self.batch_size, self.num_instances, self.test_batch_size = batch_size, num_instances, test_batch_size
        if not (isinstance(num_instances, int) and num_instances >= 1):
            raise UserError(f"dataset.num_instances={num_instances}: K, the images of each identity in a batch, "
                            "is a whole number >= 1 (4 in the paper)")
        if not isinstance(batch_size, int) or batch_size < num_instances or batch_size % num_instances:
            near = max(num_instances, round(batch_size / num_instances) * num_instances) \
                if isinstance(batch_size, (int, float)) else 4 * num_instances
            raise UserError(f"dataset.batch_size={batch_size} is not P x K with K = dataset.num_instances="
                            f"{num_instances}; use a multiple of {num_instances}, e.g. dataset.batch_size={near}")
        self.num_workers = num_workers
        self.use_masks, self.eval_masks = use_masks, eval_masks
        self.seed = seed
        self.synthetic = dict(synthetic or {})
        self.attributes = attributes
        self.mask_scheme, self.missing_masks = mask_scheme, missing_masks
        if empty_masks not in ("keep", "stripes"):
            raise UserError(f"masks.empty={empty_masks!r}: use keep or stripes")
        self.empty_masks = empty_masks
        if on_bad_image not in ("replace", "error"):
            raise UserError(f"dataset.on_bad_image={on_bad_image!r}: use 'replace' or 'error'")
        self.on_bad_image = on_bad_image
        self.options = dict(options or {})
        self.train_sets = list(train) if train else None
        if sampler_epoch not in EPOCH_MODES:
            raise UserError(f"dataset.sampler_epoch={sampler_epoch!r}: use {' or '.join(EPOCH_MODES)}")
        self.sampler_epoch = sampler_epoch
        self.attribute_names: list[str] | None = None
        if normalize_on_device not in (True, False, "auto"):
            raise UserError(f"dataset.normalize_on_device={normalize_on_device!r}: use auto, true or false")
        self.normalize_on_device = normalize_on_device
        if sharing_strategy not in (None, *SHARING_STRATEGIES):
            raise UserError(f"dataset.sharing_strategy={sharing_strategy!r}: use {' or '.join(SHARING_STRATEGIES)} "
                            "(or null: PyTorch's default)")
        self.sharing_strategy = sharing_strategy
        if prefetch_factor is not None and (isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int)
                                            or prefetch_factor < 1):
            raise UserError(f"dataset.prefetch_factor={prefetch_factor!r}: use a whole number >= 1 (batches each "
                            "loader worker keeps ready) or null (PyTorch's 2)")
        self.prefetch_factor = prefetch_factor
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(v) for v in std)
        self.erasing_fill = erasing_fill_value(erasing_fill, self.mean)
        train_args = (height, width, True, flip_p, pad, erasing_p, self.mean, self.std, erasing_fill)
        self.train_transform = build_transforms(*train_args)
        self.device_train_transform = build_transforms(*train_args, on_device=True)
        self.test_transform = build_transforms(height, width, False, mean=tuple(mean), std=tuple(std))
        self.data: ReIDData | None = None
        self._checked: set[str] = set()  # file scans done in this process (check_files)

    # -- data on disk -------------------------------------------------------------------------
    @property
    def synthetic_dir(self) -> str:
        return os.path.join(self.root, "synthetic")

    def prepare_data(self) -> None:
        """Build the synthetic dataset if it is missing (runs on one process only)."""
        if self.name != "synthetic":
            return
        from . import synthetic

        if not synthetic.is_complete(self.synthetic_dir, **self.synthetic):
            print(f"building the synthetic dataset in {self.synthetic_dir} ...", flush=True)
            synthetic.generate(self.synthetic_dir, **self.synthetic)

    def load(self, indexed: ReIDData | None = None) -> ReIDData:
        """Index the dataset (file names only, no image is decoded); ``indexed``: that listing,
        made already (``load_dataset(name, root, **options)``; the train command makes it before
        importing Lightning)."""
        if self.data is None:
            self.data = indexed if indexed is not None else load_dataset(self.name, self.root, **self.options)
            if self.train_sets:
                self.data = combine_train(self.data, self.train_sets, self.root)
            if self.val_split == "holdout":
                hold_out_validation(self.data, self.val_identities, self.seed or 0, self.num_instances)
            else:
                self.data.val_notes = ["  validation: none (dataset.val_split=none): training uses every identity, "
                                       "nothing is chosen, the final weights are tested"]
            if self.use_masks:
                missing = [r.path for r in self.data.train if r.mask_path is None]
                if missing and self.missing_masks == "stripes":
                    print(f"{len(missing)} of {len(self.data.train)} training images have no part label map: "
                          "using horizontal-stripe pseudo-parts for them (masks.missing=stripes)", flush=True)
                elif missing:
                    raise UserError(
                        f"{len(missing)} of {len(self.data.train)} training images of '{self.name}' have no part "
                        f"label map (first: {', '.join(missing[:3])}); make them with `python -m magnifier.parse "
                        f"dataset={self.name}` (offline, built-in parser), or put your parser's maps under "
                        f"{os.path.join(self.data.root, 'masks')}/<image path>.png (masks.scheme= names its label "
                        "set; backend=import converts them), or set masks.missing=stripes"
                    )
        return self.data

    def check_sampling(self, world_size: int = 1) -> None:
        """Refuse P x K batches the training split cannot fill, before any training.

        P (identities per batch and process) x ``world_size`` must not exceed the training
        identities; and K must not exceed the image count of most identities: an identity with
        fewer than K images repeats images to fill its K slots, which for most of them would
        make the batch-hard triplet mine duplicates instead of hard positives.
        """
        import numpy as np

        data = self.load()
        counts = np.bincount(np.unique([r.pid for r in data.train], return_inverse=True)[1])
        p, k = self.batch_size // self.num_instances, self.num_instances
        if p * world_size > len(counts):
            raise UserError(
                f"dataset.batch_size={self.batch_size} asks for P={p} identities per batch"
                + (f" on each of {world_size} processes" if world_size > 1 else "")
                + f", but '{self.name}' has {len(counts)} training identities; use dataset.batch_size <= "
                f"{len(counts) // world_size * k}")
        short = int((counts < k).sum())
        if short * 2 > len(counts):
            raise UserError(
                f"dataset.num_instances={k} but {short} of {len(counts)} training identities of '{self.name}' have "
                f"fewer than {k} images (median {int(np.median(counts))}); their batches would repeat images (other "
                f"samplers drop such identities); use dataset.num_instances <= {int(np.median(counts))}")

    @property
    def has_validation(self) -> bool:
        """Whether there is a validation split to choose checkpoints on."""
        return self.val_split == "holdout" and bool(self.load().val_query)

    @property
    def num_classes(self) -> int:
        return self.load().num_train_pids

    def attribute_path(self) -> str | None:
        """``attributes`` with a relative path resolved against the dataset folder."""
        if not self.attributes:
            return None
        path = os.path.expanduser(str(self.attributes))
        return path if os.path.isabs(path) else os.path.join(self.load().root, path)

    def load_attributes(self) -> dict[int, Any] | None:
        """``{original pid: (A,) float32}`` from the attribute file, or None without one."""
        path = self.attribute_path()
        if path is None:
            return None
        from .attributes import read_attributes

        table, self.attribute_names = read_attributes(path)
        return table

    @property
    def num_attributes(self) -> int:
        """Bits of the attribute vector (0 without an attribute file)."""
        if self.attribute_names is None and self.attributes:
            self.load_attributes()
        return len(self.attribute_names or ())

    def _scan_training_files(self, data: ReIDData) -> None:
        files = [r.path for r in data.train]
        if self.use_masks:
            files += [r.mask_path for r in data.train if r.mask_path]
        bad = unreadable_files(files)
        if bad:
            head = f"{len(bad)} training file(s) of '{self.name}' cannot be read (first: {', '.join(bad[:3])})"
            if self.on_bad_image == "error":
                raise UserError(f"{head}; remove or replace them, or set dataset.on_bad_image=replace")
            print(f"{head}; each is replaced by another image of the same identity when drawn", flush=True)
        if self.use_masks:
            # A label map with values outside the label set (or of another image's shape) would
            # stop training at the batch that draws it: decode them all now (seconds).
            unreadable = set(bad)
            pairs = [(r.mask_path, r.path) for r in data.train if r.mask_path and r.path not in unreadable]
            problems = label_map_problems(pairs, self.mask_scheme)
            if problems:
                more = f" (and {len(problems) - 1} more label map(s))" if len(problems) > 1 else ""
                raise UserError(f"{problems[0]}{more}; fix or remake them (python -m magnifier.parse), "
                                "or name their label set with masks.scheme=")

    def _scan_evaluation_files(self, data: ReIDData) -> None:
        # Query and gallery images cannot be swapped for others without changing the protocol.
        bad = unreadable_files([r.path for r in data.query + data.gallery + data.val_query + data.val_gallery])
        if bad:
            raise UserError(
                f"{len(bad)} query/gallery image(s) of '{self.name}' cannot be read (first: {', '.join(bad[:3])}); "
                "the evaluation protocol needs every one of them: restore them from the original release"
            )

    def check_files(self, stage: str | None = None) -> None:
        """The set-up scan of the files ``stage`` reads (``fit``: training images and label maps,
        then query and gallery), once per process: the training command runs it before any logger
        or loader exists, and :meth:`setup` then skips what was checked."""
        data = self.load()
        if stage in (None, "fit") and "train" not in self._checked:
            self._scan_training_files(data)
            self._checked.add("train")
        if "eval" not in self._checked:
            self._scan_evaluation_files(data)
            self._checked.add("eval")

    def setup(self, stage: str | None = None) -> None:
        data = self.load()
        self.check_files(stage)
        table = self.load_attributes()
        try:
            self.train_set = ReIDImageDataset(
                data.train, self.train_transform, with_masks=self.use_masks, attributes=table,
                mask_scheme=self.mask_scheme, missing_masks=self.missing_masks, on_bad_image=self.on_bad_image,
                empty_masks=self.empty_masks,
            )
        except MissingAttributesError as err:
            raise UserError(
                f"dataset.attributes={self.attribute_path()}: {err} among the training identities"
            ) from None
        try:
            kwargs = dict(with_masks=self.eval_masks, mask_scheme=self.mask_scheme)
            self.query_set = ReIDImageDataset(data.query, self.test_transform, **kwargs)
            self.gallery_set = ReIDImageDataset(data.gallery, self.test_transform, **kwargs)
            self.val_set = None
            if data.val_query:
                self.val_set = _QueryGallery(ReIDImageDataset(data.val_query, self.test_transform, **kwargs),
                                             ReIDImageDataset(data.val_gallery, self.test_transform, **kwargs))
        except ValueError as err:
            raise UserError(f"dataset.eval_masks=true but {err}; eval masks go under {data.root}/masks/<split>/") from None
        self.eval_set = _QueryGallery(self.query_set, self.gallery_set)

    # -- loaders ------------------------------------------------------------------------------
    # The training loader is resumable (ResumableLoader): a checkpoint saved mid-epoch records
    # how far the epoch went, and a resumed run starts there, with the same images and
    # augmentations (each sample's augmentation is seeded from the sampler, not from the worker).
    def _loader_kwargs(self) -> dict:
        if self.num_workers > 0 and self.sharing_strategy:
            # How a worker hands each batch's tensors to this process. PyTorch's default on Linux
            # (file_descriptor) passes every tensor's memory as a file descriptor over a socket,
            # with a connection and an authentication handshake each, in the training process
            # (its pinning thread on a GPU, competing with the training thread for the
            # interpreter): benchmarks/loader_host.py, 8.85 ms against 5.98 ms a batch of 7
            # tensors on a 2-core CPU. file_system names the shared memory instead, and
            # PyTorch's torch_shm_manager removes what a killed process leaves. Loader workers
            # are forked with this process's setting (Linux's default start method).
            torch.multiprocessing.set_sharing_strategy(self.sharing_strategy)
        kwargs = {
            "num_workers": self.num_workers,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
        }
        if self.num_workers > 0 and self.prefetch_factor is not None:  # PyTorch refuses it without workers
            kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs

    def _normalizes_on_device(self) -> bool:
        if self.normalize_on_device != "auto":
            return bool(self.normalize_on_device)
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        on_device = self._normalizes_on_device()
        self.train_set.transform = self.device_train_transform if on_device else self.train_transform
        sampler = RandomIdentitySampler(
            self.train_set.pids, num_instances=self.num_instances, batch_size=self.batch_size, seed=self.seed,
            epoch_mode=self.sampler_epoch, with_seeds=True,
        )
        return ResumableLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
            consumed=self._batches_consumed, generator=torch.Generator().manual_seed(self.seed or 0),
            # uint8 batches go to the device as 2 tensors, not 7 (magnifier.data.packing)
            collate_fn=packing.collate if on_device else None, **self._loader_kwargs(),
        )

    def _batches_consumed(self) -> int:
        """Training batches the fit loop has taken from the loader this epoch."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches of uint8 images and part labels (``normalize_on_device``), now on the
        training device: unpacked (:func:`magnifier.data.packing.unpack`), images normalised with
        their erasing boxes filled (:func:`normalize_on_device`), labels made long as the model
        indexes with them."""
        if isinstance(batch, dict):
            batch = packing.unpack(batch)
        if isinstance(batch, dict) and torch.is_tensor(batch.get("image")) and batch["image"].dtype == torch.uint8:
            batch["image"] = normalize_on_device(batch["image"], batch.pop("erase", None), self.mean, self.std,
                                                 self.erasing_fill)
            if torch.is_tensor(batch.get("mask")) and batch["mask"].dtype == torch.uint8:
                batch["mask"] = batch["mask"].long()
        return batch

    def _eval_loader(self, dataset: "_QueryGallery") -> DataLoader:
        # Its own generator: starting an iterator draws the workers' base seed, and drawn from
        # PyTorch's global random state it would shift the training steps after each validation
        # (a run resumed from the last batch of an epoch would then train differently).
        return DataLoader(dataset, batch_size=self.test_batch_size, shuffle=False,
                          generator=torch.Generator().manual_seed(0), **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        """The validation split's query then gallery; no loader (Lightning then skips
        validation) with ``val_split=none``. Never the test split."""
        return self._eval_loader(self.val_set) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        """The dataset's own query then gallery: the final figure, read once after training."""
        return self._eval_loader(self.eval_set)


# With dataset.val_split=none the validation loader is an empty list, Lightning's way of "no
# validation"; its warning that the list is empty says nothing the summary does not.
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")

#: ``dataset.sharing_strategy`` values (torch.multiprocessing's).
SHARING_STRATEGIES = ("file_system", "file_descriptor")


class ResumableLoader(DataLoader):
    """The training DataLoader, checkpointed by Lightning with the run (it has ``state_dict`` and
    ``load_state_dict``, Lightning's "stateful loader" protocol).

    Its state is the sampler's epoch and the number of batches the training loop has consumed
    (``consumed()``); restoring it makes the sampler skip those batches when that epoch is
    iterated again (:meth:`RandomIdentitySampler.resume_at`). Its own ``generator`` keeps the
    workers' base seed off PyTorch's global random state, which the checkpoint restores.
    """

    def __init__(self, *args, consumed=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._consumed = consumed or (lambda: 0)

    def state_dict(self) -> dict:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": int(self._consumed())}

    def load_state_dict(self, state: dict) -> None:
        if hasattr(self.sampler, "resume_at"):
            self.sampler.resume_at(state["epoch"], state["batches"])


class _QueryGallery(ConcatDataset):
    """Query then gallery as one dataset; ``index`` is unique across both, ``is_query`` tells them apart."""

    def __init__(self, query: ReIDImageDataset, gallery: ReIDImageDataset):
        super().__init__([query, gallery])
        self.num_query = len(query)

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        sample["index"] = index
        sample["is_query"] = index < self.num_query
        return sample
