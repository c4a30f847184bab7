"""Every command the README shows still composes, so the README cannot drift from the code.

The commands are taken from README.md's fenced code blocks: every ``python -m magnifier.<entry>``
(and the ``-m magnifier.<entry>`` of a ``torchrun`` line), with backslash-continued lines joined
and trailing ``# comments`` dropped. For the Hydra entry points (train, evaluate, export, parse)
the config is composed with the command's overrides through Hydra's compose API, Hydra's own
part included (``hydra/launcher=slurm``, ``hydra.sweep.dir=...``): what ``--cfg job`` would
print, without running anything. Placeholders such as ``<run>`` or ``<date>_<time>`` become
plain words (Hydra's grammar has no ``<``), ``...`` stays as it is: the paths only have to
compose, not to exist. A multirun (``-m``) is composed as its first job,
each swept key at its first value. Flags (``--cfg job``, ``--help``, ``-m``) are read with
Hydra's own argument parser, so an unknown flag fails too. The other entry points
(``magnifier.results``, ``magnifier.data.synthetic``, ...) must exist and answer ``--help``;
those built on argparse must also accept the README's arguments.

A failure names the README line the command starts on and gives the entry point's own one-line
error (``did you mean ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import compose

README = Path(__file__).resolve().parents[1] / "README.md"

#: Hydra entry points and the config each composes (``conf/<name>.yaml``).
HYDRA_ENTRY_POINTS = {
    "magnifier.train": "train",
    "magnifier.evaluate": "evaluate",
    "magnifier.export": "export",
    "magnifier.parse": "parse",
}
#: Entry points the README must show at least once (an extractor that finds nothing must fail).
EXPECTED = {"magnifier.train", "magnifier.evaluate", "magnifier.export", "magnifier.parse",
            "magnifier.results", "magnifier.data.synthetic"}

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
#: Fence languages whose lines are shell commands; other blocks (```text output, ```python) are not read.
SHELL = {"bash", "sh", "shell", "console", "zsh"}
_PLACEHOLDER = re.compile(r"<([^<>\n]*)>")
_SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Command:
    """One entry-point call of the README."""

    line: int          # README line the command starts on (1-based)
    text: str          # the command as written (continuations joined, comment dropped)
    module: str        # magnifier.train, ...
    args: tuple[str, ...]

    def where(self) -> str:
        return f"README.md line {self.line}: {self.text}"


def _logical_lines(block: list[tuple[int, str]]):
    """(first line number, text) of each command of a code block, continuations joined."""
    start, parts = None, []
    for number, text in block:
        if start is None:
            start = number
        stripped = text.rstrip()
        if stripped.endswith("\\"):
            parts.append(stripped[:-1])
            continue
        parts.append(stripped)
        yield start, " ".join(p.strip() for p in parts)
        start, parts = None, []
    if parts:
        yield start, " ".join(p.strip() for p in parts)


def _plain_placeholders(text: str) -> str:
    """``<run>`` -> ``run``, ``<date>_<time>`` -> ``date_time``, ``<its folder>`` -> ``its_folder``."""
    return _PLACEHOLDER.sub(lambda m: re.sub(r"\W+", "_", m.group(1)).strip("_") or "x", text)


def _shell_words(text: str) -> list[str]:
    """The words of a shell line, ``# comment`` dropped, ``<placeholder words>`` as one word."""
    text = _plain_placeholders(text)
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # unbalanced quotes: split on blanks (the compose step will complain)
        return text.split(" #", 1)[0].split()


def fenced_blocks(text: str):
    """(language, [(line number, line), ...]) of every fenced code block of ``text``."""
    block, fence, language = [], None, ""
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, language, block = match.group(1), match.group(2).lower(), []
            continue
        if match and match.group(1).startswith(fence) and not match.group(2):
            yield language, block
            fence = None
            continue
        block.append((number, line))


def readme_commands(text: str) -> list[Command]:
    """Every ``-m magnifier.<entry>`` call in the shell code blocks (```bash) of ``text``."""
    commands = []
    for language, block in fenced_blocks(text):
        if language in SHELL:
            for start, logical in _logical_lines(block):
                commands += _entry_calls(start, logical)
    return commands


def _entry_calls(line: int, logical: str) -> list[Command]:
    if "magnifier." not in logical:
        return []
    words = _shell_words(logical)
    shown = logical.split(" #", 1)[0].strip()
    calls, current = [], []
    for word in words + [";"]:
        if word not in _SEPARATORS:
            current.append(word)
            continue
        for i in range(len(current) - 1):
            if current[i] == "-m" and current[i + 1].startswith("magnifier."):
                calls.append(Command(line, shown, current[i + 1], tuple(current[i + 2:])))
                break
        current = []
    return calls


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


# -------------------------------------------------------------------------------- Hydra


def _first_job(overrides: list[str]) -> tuple[list[str], list[str]]:
    """The overrides of a multirun's first job (every sweep at its first value), and the swept
    keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    parsed = OverridesParser.create().parse_overrides(overrides)
    first, swept = [], []
    for text, override in zip(overrides, parsed):
        if not override.is_sweep_override():
            first.append(text)
            continue
        swept.append(override.key_or_group)
        sweep = override.value()
        if isinstance(sweep, IntervalSweep):
            value = str(sweep.start)
        else:
            value = next(iter(override.sweep_string_iterator()))
        first.append(f"{override.get_key_element()}={value}")
    return first, swept


def compose_command(cmd: Command):
    """Compose the config ``cmd`` would run with (Hydra's part included); raises what Hydra raises."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(cmd.args))  # an unknown flag exits (SystemExit 2)
    overrides = list(args.overrides or [])
    first, swept = _first_job(overrides)
    cfg = compose(first, output_dir="README-check", config_name=HYDRA_ENTRY_POINTS[cmd.module])
    if swept and not args.multirun and "MULTIRUN" not in str(cfg.hydra.mode):
        raise ValueError(f"{', '.join(swept)} swept without -m (Hydra needs --multirun for a sweep)")
    return cfg


def _error_line(cmd: Command, err: BaseException) -> str:
    from magnifier.cli import config_error_line

    try:
        line = config_error_line(err, HYDRA_ENTRY_POINTS[cmd.module], list(cmd.args))
    except Exception:  # noqa: BLE001 - fall back to the exception's own text
        line = None
    if line:
        return line
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


HYDRA_COMMANDS = [c for c in COMMANDS if c.module in HYDRA_ENTRY_POINTS]
OTHER_COMMANDS = [c for c in COMMANDS if c.module not in HYDRA_ENTRY_POINTS]


@pytest.mark.parametrize("cmd", HYDRA_COMMANDS, ids=[f"line{c.line}-{c.module}" for c in HYDRA_COMMANDS])
def test_hydra_command_composes(cmd: Command):
    problem = None
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            compose_command(cmd)
    except SystemExit as err:  # Hydra's argument parser on a flag it does not take
        said = stderr.getvalue().strip().splitlines()
        problem = f"the flags do not parse (exit {err.code}): {said[-1] if said else ''}"
    except Exception as err:  # noqa: BLE001 - reported with the README line
        problem = f"error: {_error_line(cmd, err)}"
    if problem:
        pytest.fail(f"{cmd.where()}\n  {problem}", pytrace=False)


# -------------------------------------------------------------------------------- the rest


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once the README's arguments parsed."""


def _run_main(module_name: str, argv: list[str]) -> tuple[int | None, str]:
    module = importlib.import_module(module_name)
    assert hasattr(module, "main"), f"{module_name} has no main()"
    out = io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = module.main(argv)
        except SystemExit as err:
            code = err.code
    return code, out.getvalue()


@pytest.mark.parametrize("cmd", OTHER_COMMANDS, ids=[f"line{c.line}-{c.module}" for c in OTHER_COMMANDS])
def test_other_command_exists(cmd: Command, monkeypatch):
    if importlib.util.find_spec(cmd.module) is None:
        pytest.fail(f"{cmd.where()}\n  no module {cmd.module}", pytrace=False)
    code, text = _run_main(cmd.module, ["--help"])
    if code not in (0, None) or "usage" not in text.lower():
        pytest.fail(f"{cmd.where()}\n  `python -m {cmd.module} --help` exited {code}: {text.strip()[:300]}",
                    pytrace=False)
    if cmd.module == "magnifier.data.synthetic":
        # key=value arguments: every key must be one the usage line lists.
        allowed = set(re.findall(r"\[?(\w+)=", text))
        unknown = [a for a in cmd.args if a.split("=", 1)[0] not in allowed]
        if unknown:
            pytest.fail(f"{cmd.where()}\n  unknown argument(s) {unknown}; the usage line: {text.strip()}",
                        pytrace=False)
        return
    if "argparse" not in vars(importlib.import_module(cmd.module)):
        return  # neither Hydra nor argparse: existing and answering --help is all that is checked
    # argparse entry points: the README's arguments must parse; main() is stopped right after.
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        parse_args(self, args, namespace)  # exits with code 2 on arguments it does not take
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    try:
        code, text = _run_main(cmd.module, list(cmd.args))
    except _Parsed:
        return
    pytest.fail(f"{cmd.where()}\n  arguments rejected (exit {code}): {text.strip()[:300]}", pytrace=False)


# -------------------------------------------------------------------------------- the extractor


def test_readme_shows_every_entry_point():
    found = {c.module for c in COMMANDS}
    assert EXPECTED <= found, f"README.md commands not found for: {sorted(EXPECTED - found)}"
    assert any(c.text.startswith("torchrun") for c in COMMANDS), "the torchrun command was not read"
    assert any("-m" in c.args for c in HYDRA_COMMANDS), "no multirun command was read"


def test_extractor_joins_continuations_and_drops_comments():
    text = "\n".join([
        "prose python -m magnifier.train not_in_a_fence=1",
        "```bash",
        "python -m magnifier.train a=1 \\",
        "    b=<run>/x   # c=3",
        "torchrun --node-rank=<0 or 1> \\",
        "    -m magnifier.evaluate -m d=1,2",
        "```",
        "```python",
        "import os  # python -m magnifier.export x=1",
        "```",
    ])
    got = readme_commands(text)
    assert [(c.line, c.module, c.args) for c in got] == [
        (3, "magnifier.train", ("a=1", "b=run/x")),
        (5, "magnifier.evaluate", ("-m", "d=1,2")),
    ]
    assert _first_job(["d=1,2", "+e=x", "hydra/launcher=slurm"]) == (["d=1", "+e=x", "hydra/launcher=slurm"], ["d"])


def test_a_misspelt_key_fails_with_its_line():
    bad = readme_commands("```bash\n\npython -m magnifier.train trainer.max_epoch=2\n```")
    assert len(bad) == 1 and bad[0].line == 3
    with pytest.raises(Exception) as info:
        compose_command(bad[0])
    assert "did you mean trainer.max_epochs?" in _error_line(bad[0], info.value)


def test_commands_sit_in_shell_blocks():
    """A command in a ```text or untagged block would escape the checks above."""
    command = re.compile(r"^\s*(\$\s+)?(\w+=\S*\s+)*(python3?|torchrun)\s")
    hidden = [f"README.md line {number}: {line.strip()}"
              for language, block in fenced_blocks(README.read_text(encoding="utf-8"))
              if language not in SHELL and language not in ("python", "py")
              for number, line in block if command.match(line)]
    assert not hidden, "commands outside ```bash blocks (tag the block bash):\n" + "\n".join(hidden)


# -------------------------------------------------------------------------------- links


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def readme_anchors(text: str) -> set[str]:
    """Every heading anchor of ``text`` (outside code blocks), repeated names numbered -1, -2."""
    fenced = {number for _, block in fenced_blocks(text) for number, _ in block}
    seen, anchors = {}, set()
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and number not in fenced and not _FENCE.match(line):
            base = github_anchor(match.group(1))
            count = seen.get(base, 0)
            anchors.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return anchors


def test_internal_links_resolve():
    text = README.read_text(encoding="utf-8")
    anchors = readme_anchors(text)
    broken = [f"README.md line {number}: (#{target})"
              for number, line in enumerate(text.splitlines(), 1)
              for target in re.findall(r"\]\(#([^)\s]+)\)", line) if target not in anchors]
    assert not broken, "links to no heading:\n" + "\n".join(broken)
    assert github_anchor("Part maps from raw images: `python -m magnifier.parse`") == \
        "part-maps-from-raw-images-python--m-magnifierparse"
    assert github_anchor("W&B dashboards") == "wb-dashboards"
