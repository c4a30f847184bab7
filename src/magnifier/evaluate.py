"""``python -m magnifier.evaluate``: evaluate a checkpoint on a query/gallery split.

Prints rank-1/5/10, mAP and mINP (and the same after k-reciprocal re-ranking with
``eval.rerank=true``), writes ``features.npz``, ``metrics.json``, ranked-list pictures and
``report.html`` (one self-contained page to open in a browser) into the run's output folder, and sends the pictures and a per-query table to W&B with the W&B
logger. Configuration: ``conf/evaluate.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from magnifier.config import config_dir, instantiate_config, register_resolvers  # noqa: E402
from magnifier.errors import UserError, exit_on_user_error  # noqa: E402
from magnifier.evaluation.ranked_lists import summarize  # noqa: E402,F401 - also magnifier.evaluate.summarize

log = logging.getLogger("magnifier.evaluate")
register_resolvers()

_COLUMNS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def format_table(rows: dict[str, dict]) -> str:
    """Rows of metrics (fractions) as a table in percent."""
    head = f"{'':12}" + "".join(f"{k:>9}" for k in _COLUMNS)
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name:12}" + "".join(f"{100 * m[k]:9.2f}" for k in _COLUMNS))
    return "\n".join(lines)


def _log_wandb(loggers: list, per_query: dict, feats: dict, pictures) -> None:
    """The ranked-list pictures and a per-query table to each W&B logger."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        if pictures:
            logger.log_image("ranked_lists", [p for _, p, _ in pictures],
                             caption=[label for label, _, _ in pictures])
        q = feats["is_query"]
        data = [[str(p), int(pid), int(cam), None if np.isnan(ap) else float(ap), int(r),
                 None if np.isnan(inp) else float(inp)]
                for p, pid, cam, ap, r, inp in zip(feats["paths"][q], feats["pids"][q],
                                                   feats["camids"][q], per_query["ap"],
                                                   per_query["first_rank"], per_query["inp"])]
        logger.log_table("per_query", columns=["query", "pid", "camid", "AP", "first_rank", "INP"],
                         data=data)


def _run_config(cfg: DictConfig, model: dict, dataset_args: dict) -> dict:
    """The evaluation's resolved config for the loggers (flat on W&B, as a training run's).

    ``model`` is the checkpoint's network (the model group only lets training presets compose)
    and the dataset is as the data module was built (``dataset_args``: no label maps, the
    checkpoint's input size). The training-only groups (loss, optim, trainer) are left out: in
    a project shared with training runs, their columns would describe what was not evaluated.
    """
    from magnifier.loggers import run_config  # Lightning is imported after Hydra's logging set-up

    config = run_config(cfg, drop=("loss", "optim", "trainer"))
    config["model"] = model
    config["dataset"] = {**config["dataset"], **dataset_args}
    return config


@exit_on_user_error
def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.dataset``; returns {"plain": {...}, "reranked": {...}}."""
    import torch
    from hydra.utils import instantiate

    from magnifier.checkpoint import load_network
    from magnifier.evaluation import evaluate_features, evaluate_rank
    from magnifier.evaluation.distance import GalleryNorms
    from magnifier.evaluation.features import extract_features, resolve_device
    from magnifier.evaluation.rerank import re_ranking_features

    if not cfg.get("ckpt_path"):
        raise UserError("ckpt_path is required: python -m magnifier.evaluate ckpt_path=path/to/best.ckpt")
    try:
        device = resolve_device(str(cfg.eval.device))
    except (RuntimeError, ValueError) as err:
        raise UserError(f"eval.{err}") from None
    net, info = load_network(cfg.ckpt_path, trust_checkpoint=bool(cfg.get("trust_checkpoint")))
    net = net.to(device).eval()

    # Evaluation never needs label maps: the parsing head predicts the parts. The images are
    # prepared as in training unless eval.input=dataset.
    if str(cfg.eval.get("input", "checkpoint")) not in ("checkpoint", "dataset"):
        raise UserError(f"eval.input={cfg.eval.input}: use checkpoint or dataset")
    trained = info.get("data") or {}
    same_input = {k: v for k, v in trained.items() if v is not None} if cfg.eval.get("input") == "checkpoint" else {}
    # The test split only: no validation identities are held out of a split nothing trains on.
    dataset_args = dict(use_masks=False, eval_masks=False, val_split="none", **same_input)
    datamodule = instantiate_config(cfg.dataset, **dataset_args)
    datamodule.prepare_data()
    print(datamodule.load().summary(), flush=True)
    datamodule.setup("test")
    feats = extract_features(net, datamodule.test_dataloader(), device, flip=bool(cfg.eval.flip))
    q, g = feats["is_query"], ~feats["is_query"]
    qf, gf = torch.from_numpy(feats["features"][q]), torch.from_numpy(feats["features"][g])
    ids = (feats["pids"][q], feats["pids"][g], feats["camids"][q], feats["camids"][g])
    options = dict(max_rank=int(cfg.eval.max_rank), ap_mode=str(cfg.eval.ap_mode),
                   protocol=str(cfg.eval.protocol), num_repeats=int(cfg.eval.num_repeats),
                   seed=int(cfg.get("seed") or 0), per_query=True)
    try:
        plain = evaluate_features(qf, gf, *ids, **options)
    except ValueError as err:
        raise UserError(f"cannot evaluate {cfg.dataset.name}: {err}") from None
    results = {"plain": plain}
    reranked = None
    if cfg.eval.rerank:
        log.info("re-ranking (k1=%s, k2=%s, lambda=%s)", cfg.eval.k1, cfg.eval.k2, cfg.eval.lambda_value)
        try:
            reranked = re_ranking_features(qf, gf, k1=int(cfg.eval.k1), k2=int(cfg.eval.k2),
                                           lambda_value=float(cfg.eval.lambda_value))
        except ValueError as err:
            raise UserError(f"eval.rerank: {err}") from None
        results["reranked"] = evaluate_rank(reranked, *ids, **options)
    norms = GalleryNorms(gf)

    def distance_rows(rows):
        # The pictures show the final ranking: re-ranked when asked for.
        return reranked[rows] if reranked is not None else norms.distance(qf[rows]).numpy()

    rows = {name: summarize(r) for name, r in results.items()}
    final = results["reranked" if cfg.eval.rerank else "plain"]["per_query"]

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.eval.save_features:
        np.savez(out_dir / "features.npz", query_features=feats["features"][q],
                 gallery_features=feats["features"][g], q_pids=ids[0], g_pids=ids[1],
                 q_camids=ids[2], g_camids=ids[3], q_paths=feats["paths"][q],
                 g_paths=feats["paths"][g])
    from magnifier.evaluation.ranked_lists import draw_ranked_lists

    lists = cfg.eval.ranked_lists
    pictures = draw_ranked_lists(net, datamodule, feats, final, out_dir / "ranked_lists", worst=int(lists.worst),
                                 best=int(lists.best), queries=list(lists.queries or []), top_k=int(lists.top_k),
                                 distance_rows=distance_rows)
    report = {
        "checkpoint": str(cfg.ckpt_path),
        "dataset": str(cfg.dataset.name),
        "num_query": int(q.sum()),
        "num_gallery": int(g.sum()),
        "embedding_dim": int(feats["features"].shape[1]),
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "metrics": rows,
        "cmc": {name: r["cmc"].tolist() for name, r in results.items()},
        "ranked_lists": [facts for _, _, facts in pictures],
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    page = None
    if cfg.eval.get("report", True):
        from magnifier.evaluation.report import write_report

        # One self-contained page (pictures inlined): the table, CMC, AP histogram, ranked lists.
        page = write_report(
            out_dir, rows, report["cmc"], final["ap"], final["valid"], report["ranked_lists"],
            dataset=report["dataset"], checkpoint=report["checkpoint"], num_query=report["num_query"],
            num_gallery=report["num_gallery"], ranking="reranked" if cfg.eval.rerank else "plain",
            details={"embedding dim": report["embedding_dim"], "flip TTA": bool(cfg.eval.flip),
                     "AP mode": cfg.eval.ap_mode, "protocol": cfg.eval.protocol})
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    try:
        config = _run_config(cfg, info["model"], dataset_args)
        for logger in loggers:
            logger.log_hyperparams(config)
        _log_wandb(loggers, final, feats, pictures)
        for logger in loggers:
            logger.log_metrics({f"{n}/{k}": v for n, m in rows.items() for k, v in m.items()})
            logger.save()
    finally:
        from magnifier.loggers import finish_wandb  # Lightning is imported after Hydra's logging set-up

        finish_wandb(loggers)
    skipped = rows["plain"]["num_skipped_queries"]
    note = f" ({skipped} queries without a true match skipped)" if skipped else ""
    print(f"\n{cfg.dataset.name}: {int(q.sum())} query x {int(g.sum())} gallery, "
          f"{feats['features'].shape[1]}-d{', flip TTA' if cfg.eval.flip else ''}{note} (%):\n"
          + format_table(rows) + f"\noutputs: {out_dir}" + (f"\nreport: {page}" if page else ""), flush=True)
    warning = getattr(datamodule.load(), "camera_warning", None)
    if warning:
        print(warning, flush=True)
    return rows


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    from magnifier.cli import run_entry_point

    run_entry_point(main, "evaluate")
