"""python -m magnifier.export format=onnx: onnxruntime matches PyTorch, and runs without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import compose


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    from magnifier.export import export

    out = tmp_path_factory.mktemp("export")
    # An explicit output= wins over the default (beside the checkpoint's run folder).
    path = export(compose([f"ckpt_path={tiny_checkpoint}", f"paths.log_dir={out / 'logs'}",
                           f"output={out / 'model.onnx'}"], output_dir=str(out), config_name="export"))
    assert path == out / "model.onnx"
    return path


def test_onnxruntime_matches_pytorch_with_a_dynamic_batch(exported, tiny_checkpoint):
    import onnxruntime as ort

    from magnifier.checkpoint import load_network

    assert exported.name == "model.onnx" and exported.is_file()
    import onnx

    assert "ScatterElements" not in {node.op_type for node in onnx.load(str(exported)).graph.node}
    net, _ = load_network(tiny_checkpoint)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.rand(n, 3, 64, 32, generator=torch.Generator().manual_seed(10 + n))
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(["embedding"], {"images": x.numpy()})[0]
        assert got.shape == (n, 1024)
        assert np.abs(got - expected).max() <= 1e-4
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    sidecar = json.loads(Path(str(exported) + ".json").read_text())
    assert sidecar["input"]["shape"] == ["N", 3, 64, 32] and sidecar["input"]["channel_order"] == "RGB"
    assert sidecar["input"]["mean"] == [0.485, 0.456, 0.406]
    assert sidecar["output"]["shape"] == ["N", 1024] and sidecar["max_abs_difference_vs_pytorch"] <= 1e-4


def _random_magnifier(fusion: str):
    from hydra.utils import instantiate

    backbone = {"_target_": "magnifier.models.ResNetBackbone", "name": "resnet18", "pretrained": False}
    torch.manual_seed(0)
    net = instantiate({"_target_": "magnifier.models.MagnifierNet", "backbone": backbone,
                       "fusion": fusion}, num_classes=8).eval()
    for m in net.modules():  # non-trivial running statistics, as after training
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_other_fusions_export_with_the_same_sfb_pooling(fusion, tmp_path, monkeypatch):
    import onnx

    from magnifier.export import check_onnx, export_onnx

    net = _random_magnifier(fusion)
    x = torch.rand(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scatter = net(x)
        # The SFB's export formulation (one 0/1 mask per region) gives the very same numbers.
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        masked = net(x)
        monkeypatch.undo()
    # Max pooling is exact either way; the attention fusion's weighted sum may round in the last
    # bit differently on some CPUs (1.1e-8 seen), far below what a pooling mistake would change.
    torch.testing.assert_close(scatter, masked, rtol=0, atol=1e-6)
    path = tmp_path / f"{fusion}.onnx"
    export_onnx(net, path, 64, 32)
    assert "ScatterElements" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert check_onnx(net, path, 64, 32, batch_sizes=(1, 4)) <= 1e-4


def test_runs_without_pytorch_in_the_process(exported, tiny_checkpoint, tmp_path):
    from magnifier.checkpoint import load_network

    x = np.random.default_rng(0).random((2, 3, 64, 32), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(exported)!r}, providers=['CPUExecutionProvider'])\n"
        f"y = s.run(None, {{'images': np.load({str(tmp_path / 'x.npy')!r})}})[0]\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok', y.shape)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok (2, 1024)"
    net, _ = load_network(tiny_checkpoint)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() <= 1e-4


def _cli(args, cwd):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "magnifier.export", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_input_gets_one_line(tmp_path, tiny_checkpoint):
    base = [f"paths.log_dir={tmp_path / 'logs'}"]
    run = _cli(base, tmp_path)
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("error: ckpt_path is required")
    run = _cli(base + [f"ckpt_path={tiny_checkpoint}", "format=tensorrt"], tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and lines == ["error: format=tensorrt is not supported; use format=onnx"]


def test_default_output_is_model_onnx_in_the_checkpoints_run_folder(tmp_path, tiny_checkpoint):
    import shutil

    ckpt = tmp_path / "runs" / "x" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, ckpt)
    run = _cli([f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path / 'logs'}", "check=false"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    model = tmp_path / "runs" / "x" / "model.onnx"
    assert model.is_file() and Path(str(model) + ".json").is_file()
    assert f"wrote {model} " in run.stdout
    # Nothing else: no empty Hydra run folder left under logs/export, nothing in the working folder.
    # (Hydra makes paths.log_dir itself when it is missing: an empty logs/ may stay.)
    assert not (tmp_path / "logs" / "export").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"runs", "logs"}
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())
    assert sorted(p.name for p in model.parent.iterdir()) == [
        "checkpoints", "model.onnx", "model.onnx.json"]


def test_default_output_of_a_checkpoint_outside_a_checkpoints_folder_is_beside_it(tmp_path):
    from magnifier.export import default_output

    run_dir = tmp_path / "runs" / "x"
    assert default_output(run_dir / "checkpoints" / "best.ckpt") == run_dir / "model.onnx"
    assert default_output(tmp_path / "downloads" / "a.ckpt") == tmp_path / "downloads" / "model.onnx"
    assert default_output("market.ckpt") == Path("model.onnx")
