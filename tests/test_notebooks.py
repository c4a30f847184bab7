"""Every notebook in notebooks/ runs from top to bottom and is committed with its outputs stripped.

Each ``notebooks/*.ipynb`` is executed through nbclient with the ``python3`` kernel, which
jupyter_client starts with this interpreter (``sys.executable``); a probe cell run first checks that
the kernel really is this environment. The kernel works in a temporary folder (its working directory
and ``TMPDIR``), each cell has a time limit, and a failure names the cell and shows its source and the
error. A new notebook is picked up without any change here.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: seconds one cell may run (the longest, a short training run, takes well under a minute)
CELL_TIMEOUT = 300
PROBE = "import sys\nprint(sys.prefix)"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _name(path: Path) -> str:
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def _describe(nb, index: int) -> str:
    """'cell 7 of 24 (code cell 4)' for the notebook's 0-based cell ``index``."""
    code = sum(c.cell_type == "code" for c in nb.cells[: index + 1])
    return f"cell {index + 1} of {len(nb.cells)} (code cell {code})"


def _error_text(cell, limit: int = 60) -> str:
    """The error outputs of a cell as plain text: the last ``limit`` lines of the traceback."""
    lines = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            traceback = _ANSI.sub("", "\n".join(out.get("traceback", []))).splitlines()
            lines += traceback or [f"{out.get('ename')}: {out.get('evalue')}"]
    if len(lines) > limit:
        lines = [f"... ({len(lines) - limit} lines above left out)"] + lines[-limit:]
    return "\n".join(lines)


def run_notebook(path: Path, workdir: Path, timeout: int = CELL_TIMEOUT):
    """Execute the notebook at ``path`` in ``workdir``; returns it with its outputs.

    Fails the calling test (``pytest.fail``) with the failing cell's number, source and error when
    a cell raises, runs past ``timeout`` seconds or kills the kernel, and when the kernel is not
    this interpreter's environment.
    """
    nb = nbformat.read(path, as_version=4)
    original = len(nb.cells)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))  # the kernel's environment, checked below
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "NO_ALBUMENTATIONS_UPDATE": "1", "CUDA_VISIBLE_DEVICES": "",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    current = {"index": None}

    def started(cell, cell_index, **_):
        current["index"] = cell_index

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}}, on_cell_execute=started)
    problem = None
    try:
        client.execute(env=env)
    except CellTimeoutError:
        problem = f"ran past the {timeout} s limit of a cell"
    except DeadKernelError as err:
        problem = f"the kernel died ({err})"
    except CellExecutionError as err:
        problem = f"raised {err.ename}: {err.evalue}"
    if problem is not None:
        index = current["index"]
        if index is None or index == 0:
            pytest.fail(f"{_name(path)}: the kernel could not run the probe cell: {problem}", pytrace=False)
        cell = nb.cells[index]
        nb.cells.pop(0)
        where = _describe(nb, index - 1)
        message = [f"{_name(path)}: {where} {problem}", "--- source ---", cell.source.rstrip()]
        details = _error_text(cell)
        if details:
            message += ["--- error ---", details]
        pytest.fail("\n".join(message), pytrace=False)
    probe = nb.cells.pop(0)
    seen = "".join(o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream").strip()
    assert os.path.realpath(seen) == os.path.realpath(sys.prefix), (
        f"the python3 kernel ran in {seen}, not in this environment ({sys.prefix}); "
        f"the notebook ran with another interpreter's packages"
    )
    assert len(nb.cells) == original
    return nb


def unstripped(nb) -> list[str]:
    """What a committed notebook should not hold: outputs, execution counts, widget state."""
    problems = []
    if "widgets" in nb.metadata:
        problems.append("the notebook's metadata holds widget state ('widgets')")
    for index, cell in enumerate(nb.cells):
        where = _describe(nb, index)
        if cell.cell_type == "code":
            if cell.get("outputs"):
                problems.append(f"{where} has {len(cell.outputs)} output(s)")
            if cell.get("execution_count") is not None:
                problems.append(f"{where} has execution_count {cell.execution_count}")
        for key in ("execution", "widgets"):
            if key in cell.get("metadata", {}):
                problems.append(f"{where} has '{key}' in its metadata")
    return problems


@pytest.mark.multiprocess
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = run_notebook(path, tmp_path)
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source.strip())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    problems = unstripped(nb)
    assert not problems, (f"{_name(path)} is committed with outputs; clear them before committing (in "
                          f"Jupyter: Edit > Clear Outputs of All Cells, then save):\n" + "\n".join(problems))
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{_name(path)}: kernel {kernel!r}; use the python3 kernel"
    assert any(c.cell_type == "markdown" for c in nb.cells), "a notebook explains what it shows"


def test_notebooks_are_found():
    names = [p.name for p in NOTEBOOKS]
    assert {"01_quickstart.ipynb", "02_part_maps.ipynb"} <= set(names), names


def _write(path: Path, *cells) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells = [nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c)
                for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.mark.multiprocess
def test_a_failing_cell_fails_with_its_source_and_error(tmp_path):
    after = tmp_path / "ran_after_the_error"
    path = _write(tmp_path / "broken.ipynb", "md:# A notebook with a mistake", "x = 1",
                  "y = x + 1\nraise ValueError(f'deliberate {y}')", f"open({str(after)!r}, 'w').close()")
    with pytest.raises(pytest.fail.Exception) as info:
        run_notebook(path, tmp_path / "work")
    message = str(info.value)
    assert "cell 3 of 4 (code cell 2) raised ValueError: deliberate 2" in message
    assert "raise ValueError(f'deliberate {y}')" in message  # the cell's source
    assert "--- error ---" in message and "\x1b[" not in message
    assert not after.exists(), "cells after the failing one must not run"


@pytest.mark.multiprocess
def test_a_cell_past_the_time_limit_fails_naming_it(tmp_path):
    path = _write(tmp_path / "slow.ipynb", "import time", "time.sleep(60)")
    with pytest.raises(pytest.fail.Exception) as info:
        run_notebook(path, tmp_path / "work", timeout=3)
    message = str(info.value)
    assert "cell 2 of 2 (code cell 2) ran past the 3 s limit" in message and "time.sleep(60)" in message


@pytest.mark.multiprocess
def test_the_kernel_is_this_environment_in_the_temporary_folder(tmp_path):
    path = _write(tmp_path / "where.ipynb", "import os, sys, tempfile\n"
                  "print(sys.executable)\nprint(os.getcwd())\nprint(tempfile.gettempdir())")
    nb = run_notebook(path, tmp_path / "work")
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("output_type") == "stream")
    executable, cwd, tmp = printed.split()
    assert os.path.realpath(executable) == os.path.realpath(sys.executable)
    assert Path(cwd).resolve() == (tmp_path / "work").resolve()
    assert Path(tmp).resolve() == (tmp_path / "work" / "tmp").resolve()


def test_outputs_left_in_a_notebook_are_found(tmp_path):
    path = _write(tmp_path / "clean.ipynb", "md:# Title", "print('hello')")
    assert unstripped(nbformat.read(path, as_version=4)) == []
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    nb.cells[1].execution_count = 1
    nb.cells[1].metadata["execution"] = {"iopub.status.busy": "2025-01-01T00:00:00Z"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    problems = unstripped(nb)
    assert problems == [
        "the notebook's metadata holds widget state ('widgets')",
        "cell 2 of 2 (code cell 1) has 1 output(s)",
        "cell 2 of 2 (code cell 1) has execution_count 1",
        "cell 2 of 2 (code cell 1) has 'execution' in its metadata",
    ]
