"""python -m magnifier.evaluate: tables, outputs (npz, JSON, pictures, W&B) and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import compose, tiny_overrides


def _cfg(data_dir: Path, ckpt: Path, out: Path, extra: list[str]):
    overrides = tiny_overrides(data_dir) + [f"ckpt_path={ckpt}", f"paths.log_dir={out / 'logs'}"]
    return compose(overrides + extra, output_dir=str(out), config_name="evaluate")


def test_evaluate_writes_metrics_features_pictures_and_wandb_run(tiny_data_dir, tiny_checkpoint, tmp_path,
                                                                  capsys):
    from magnifier.evaluate import evaluate
    from magnifier.evaluation import evaluate_features, evaluate_rank
    from magnifier.evaluation.rerank import re_ranking_features

    out = tmp_path / "run"
    query_dir = tiny_data_dir / "synthetic" / "query"
    named = sorted(query_dir.glob("*.jpg"))[3].name
    rows = evaluate(_cfg(tiny_data_dir, tiny_checkpoint, out, [
        "eval.rerank=true", "eval.flip=true", "eval.ranked_lists.worst=2", "eval.ranked_lists.best=1",
        f"eval.ranked_lists.queries=[{named}]", "logger=wandb"]))
    printed = capsys.readouterr().out
    assert "plain" in printed and "reranked" in printed and "rank1" in printed
    assert set(rows) == {"plain", "reranked"}
    for m in rows.values():
        assert 0 <= m["rank1"] <= m["rank5"] <= m["rank10"] <= 1 and 0 < m["mAP"] <= 1

    # The saved features reproduce both rows exactly.
    npz = np.load(out / "features.npz")
    qf, gf = npz["query_features"], npz["gallery_features"]
    ids = (npz["q_pids"], npz["g_pids"], npz["q_camids"], npz["g_camids"])
    assert qf.shape[0] == len(list(query_dir.glob("*.jpg"))) and qf.shape[1] == gf.shape[1]
    np.testing.assert_allclose(np.linalg.norm(qf, axis=1), 1, atol=1e-5)
    plain = evaluate_features(qf, gf, *ids)
    assert plain["mAP"] == pytest.approx(rows["plain"]["mAP"], abs=1e-12)
    assert plain["cmc"][0] == pytest.approx(rows["plain"]["rank1"], abs=1e-12)
    reranked = evaluate_rank(re_ranking_features(qf, gf), *ids)
    assert reranked["mAP"] == pytest.approx(rows["reranked"]["mAP"], abs=1e-12)

    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["plain"]["mAP"] == pytest.approx(rows["plain"]["mAP"])
    assert report["num_query"] == qf.shape[0] and report["num_gallery"] == gf.shape[0]
    assert len(report["cmc"]["plain"]) == 50 and report["eval"]["flip"] is True
    pictures = report["ranked_lists"]
    assert len(pictures) == 4 and Path(pictures[-1]["query"]).name == named
    worst, best = pictures[0]["AP"], pictures[2]["AP"]
    assert worst <= pictures[1]["AP"] <= best
    page = (out / "report.html").read_text()  # report=true by default: one page with every picture inlined
    assert 'id="metrics"' in page and page.count("data:image/png;base64,") >= len(pictures)
    for p in pictures:
        assert (out / p["picture"]).is_file()
        # Cameras as the file names give them (c3 -> "3"), not the 0-based index.
        assert p["camera"] == Path(p["query"]).name.split("_c")[1][:1] == str(p["camid"] + 1)

    # W&B (offline): the pictures and the per-query table are in the run.
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert len(list(runs[0].glob("files/media/images/ranked_lists*.png"))) == 4
    assert list(runs[0].glob("files/media/table/per_query*.table.json"))


def test_features_without_flip_are_the_networks_embeddings(tiny_data_dir, tiny_checkpoint, tmp_path):
    from hydra.utils import instantiate

    from magnifier.checkpoint import load_network
    from magnifier.evaluate import evaluate

    out = tmp_path / "run"
    cfg = _cfg(tiny_data_dir, tiny_checkpoint, out, ["logger=csv", "eval.ranked_lists.worst=0",
                                                     "eval.ranked_lists.best=0"])
    evaluate(cfg)
    npz = np.load(out / "features.npz")
    net, _ = load_network(tiny_checkpoint)
    dm = instantiate(cfg.dataset, use_masks=False)
    dm.setup("test")
    images = torch.stack([dm.query_set[i]["image"] for i in range(4)])
    with torch.no_grad():
        expected = net.eval()(images).numpy()
    np.testing.assert_allclose(npz["query_features"][:4], expected, atol=1e-5)
    assert not (out / "ranked_lists").exists() or not list((out / "ranked_lists").iterdir())


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "magnifier.evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_input_gets_one_line(tmp_path, tiny_data_dir):
    base = [f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={tmp_path / 'logs'}", "logger=csv"]
    run = _cli(base, tmp_path)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "error: ckpt_path is required: python -m magnifier.evaluate ckpt_path=path/to/best.ckpt"]
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    run = _cli(base + [f"ckpt_path={bad}"], tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.ckpt" in lines[0]


def test_unknown_ranked_list_query_is_a_user_error(tiny_data_dir, tiny_checkpoint, tmp_path):
    from magnifier.evaluate import evaluate

    cfg = _cfg(tiny_data_dir, tiny_checkpoint, tmp_path / "run",
               ["logger=csv", "eval.ranked_lists.queries=[nobody.jpg]"])
    with pytest.raises(SystemExit) as exit_info:
        evaluate(cfg)
    assert exit_info.value.code == 2


def test_print_config_only(tmp_path):
    run = _cli(["ckpt_path=x.ckpt", "dataset=market", "eval.rerank=true", "--cfg", "job"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "rerank: true" in run.stdout and "name: market" in run.stdout
    # The training presets compose here too.
    run = _cli(["ckpt_path=x.ckpt", "experiment=market_paper", "--cfg", "job"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "height: 384" in run.stdout
