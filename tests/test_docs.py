"""The documentation cannot drift from the code.

Every shell command in README.md and docs/*.md that runs the project (`python[3] -m llava.X`,
`python llava/....py`, `python scripts/x.py`, `deepspeed|torchrun ... llava/....py`,
`bash scripts/....sh`), in fenced shell blocks or inline code spans, must name an existing entry
point and pass only flags its real argument parser accepts (spelled exactly). Continuations are
joined, `VAR=value` / `exec` / `nohup` prefixes skipped, `; && || | &` split commands. Arguments
of `bash scripts/x.sh` go to the script's command that forwards `"$@"`; the script's own project
commands are checked too. A parser is captured without running anything: the entry code runs as
`__main__` with `argparse.ArgumentParser.parse_known_args` (which `parse_args` and
`HfArgumentParser.parse_args_into_dataclasses` call) patched to hand the parser back.
The flag tables of Training.md and Data.md must list real flags with their real defaults, and
every flag the project declares.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import re
import runpy
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
PREFIX_WORDS = {"exec", "nohup", "env", "time", "then", "do", "else", "sudo", "!"}
LAUNCHERS = {"deepspeed", "torchrun"}
PY_TARGET = re.compile(r"^(\./)?(llava|scripts)/\S+\.py$")
SH_TARGET = re.compile(r"^(\./)?scripts/\S+\.sh$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FLAG = re.compile(r"^--?[A-Za-z][\w.-]*$")
REDIRECT = re.compile(r"\d*[<>]&\d+|&>")


# ------------------------------------------------------------------------------ collecting commands
@dataclass
class Command:
    source: str  # "docs/Training.md:42" (the line the command starts on)
    words: list[str]


def fenced_blocks(text: str):
    """(line number of the block's first code line, language, code) for every fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        yield start + 1, lang, "\n".join(lines[start:j])
        i = j + 1


def logical_lines(code: str, first_line: int):
    """(line number, text) with backslash continuations joined, comment lines and `$ ` prompts dropped."""
    out, buf, buf_line = [], "", None
    for k, raw in enumerate(code.splitlines()):
        line = raw.strip()
        if buf_line is None:
            if not line or line.startswith("#"):
                continue
            buf_line = first_line + k
            line = line[2:] if line.startswith("$ ") else line
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((buf_line, buf + line))
        buf, buf_line = "", None
    if buf_line is not None:
        out.append((buf_line, buf))
    return out


def simple_commands(text: str) -> list[list[str]]:
    """The words of each simple command on a shell line (split at ; && || | &)."""
    lexer = shlex.shlex(REDIRECT.sub(" ", text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for word in lexer:
        if word and set(word) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    return [c for c in commands if c]


def collect_commands(path: Path, root: Path = REPO) -> tuple[list[Command], list[str]]:
    """The project commands in a markdown file, and the lines that could not be parsed."""
    text = path.read_text()
    try:
        name = str(path.relative_to(root))
    except ValueError:
        name = str(path)
    found, errors = [], []
    pieces = [(line, lang, code) for line, lang, code in fenced_blocks(text) if lang in SHELL_LANGS]
    outside = re.sub(r"(?ms)^\s*(```+|~~~+).*?^\s*\1\s*$", lambda m: "\n" * m.group(0).count("\n"), text)
    for lineno, line in enumerate(outside.splitlines(), 1):
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line):
            pieces.append((lineno, "inline", span))
    for first, _, code in pieces:
        for lineno, line in logical_lines(code, first):
            try:
                commands = simple_commands(line)
            except ValueError as e:
                errors.append(f"{name}:{lineno}: cannot split this shell line ({e}): {line}")
                continue
            for words in commands:
                if project_target(words) is not None:
                    found.append(Command(f"{name}:{lineno}", words))
    return found, errors


# ------------------------------------------------------------------------------ what a command runs
@dataclass
class Target:
    kind: str  # "module" | "file" | "script"
    name: str  # llava.serve.cli | llava/train/train_mem.py | scripts/v1_5/pretrain.sh
    args: list[str] = field(default_factory=list)


def _is_python(word: str) -> bool:
    return re.fullmatch(r"python(\d+(\.\d+)?)?", os.path.basename(word)) is not None


def project_target(words: list[str]) -> Target | None:
    """What project entry point a simple command runs (None: not this project)."""
    i = 0
    while i < len(words) and (ASSIGNMENT.match(words[i]) or words[i] in PREFIX_WORDS):
        i += 1
    if i == len(words):
        return None
    cmd, rest = words[i], words[i + 1 :]
    base = os.path.basename(cmd)
    if _is_python(cmd):
        for k, word in enumerate(rest):
            if word == "-m":
                module = rest[k + 1] if k + 1 < len(rest) else ""
                if module == "llava" or module.startswith("llava."):
                    return Target("module", module, rest[k + 2 :])
                return None
            if word.startswith("-"):
                continue
            return Target("file", word.removeprefix("./"), rest[k + 1 :]) if PY_TARGET.match(word) else None
        return None
    if base in LAUNCHERS or cmd.startswith("$"):
        for k, word in enumerate(rest):
            if PY_TARGET.match(word):
                return Target("file", word.removeprefix("./"), rest[k + 1 :])
            if word == "-m" and k + 1 < len(rest) and rest[k + 1].startswith("llava"):
                return Target("module", rest[k + 1], rest[k + 2 :])
        return None
    if base in ("bash", "sh") and rest and SH_TARGET.match(rest[0]):
        return Target("script", rest[0].removeprefix("./"), rest[1:])
    if cmd.startswith("./") and SH_TARGET.match(cmd):  # a bare `scripts/x.sh` is usually prose
        return Target("script", cmd.removeprefix("./"), rest)
    return None


def flags_of(args: list[str]) -> list[str]:
    """The option names among a command's arguments (`--x=1` -> `--x`; values like `-2` are not flags)."""
    out = []
    for word in args:
        if word == "--":
            break
        word = word.lstrip("[").rstrip("]")
        name = word.split("=", 1)[0]
        if FLAG.match(name):
            out.append(name)
    return out


# ------------------------------------------------------------------------------ the real parsers
class _Captured(BaseException):  # BaseException: no `except Exception` in entry code swallows it
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


class ParserNotFound(Exception):
    pass


def capture_parser(kind: str, name: str, root: Path = REPO) -> argparse.ArgumentParser:
    """The argparse parser the entry point builds, caught when it is about to parse."""

    def hand_over(self, args=None, namespace=None):
        raise _Captured(self)

    root_logger = logging.getLogger()
    try:
        with (  # everything the entry code might touch before parsing is put back afterwards
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", hand_over),
            mock.patch.object(sys, "argv", [name]),
            mock.patch.dict(os.environ),
            mock.patch.object(root_logger, "handlers", root_logger.handlers[:]),
            mock.patch.object(root_logger, "level", root_logger.level),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            if kind == "module":
                runpy.run_module(name, run_name="__main__")
            else:
                runpy.run_path(str(root / name), run_name="__main__")
    except _Captured as c:
        return c.parser
    except BaseException as e:  # noqa: BLE001 - any failure before parsing is reported
        raise ParserNotFound(f"{name} failed before parsing its arguments: {type(e).__name__}: {e}") from e
    raise ParserNotFound(f"{name} ran to the end without parsing command-line arguments")


def module_file(module: str, root: Path = REPO) -> Path | None:
    base = root / Path(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__main__.py") if p.is_file()), None)


class Checker:
    """Checks commands against the repository at `root`; parsers are captured once each."""

    def __init__(self, root: Path = REPO):
        self.root = root
        self._parsers: dict[tuple[str, str], argparse.ArgumentParser | str] = {}

    def parser(self, kind: str, name: str) -> argparse.ArgumentParser | str:
        """The parser of an entry point, or why it could not be found."""
        key = (kind, name)
        if key not in self._parsers:
            try:
                self._parsers[key] = capture_parser(kind, name, self.root)
            except ParserNotFound as e:
                self._parsers[key] = str(e)
        return self._parsers[key]

    def options(self, kind: str, name: str) -> set[str] | str:
        """The option strings of an entry point, or why they could not be found."""
        parser = self.parser(kind, name)
        if isinstance(parser, str):
            return parser
        return {opt for action in parser._actions for opt in action.option_strings}

    def check_entry(self, target: Target, where: str) -> list[str]:
        if target.kind == "module":
            if module_file(target.name, self.root) is None:
                return [f"{where}: `python -m {target.name}`: no such module in this repository"]
        elif not (self.root / target.name).is_file():
            return [f"{where}: {target.name} does not exist"]
        flags = flags_of(target.args)
        known = self.options(target.kind, target.name) if flags else set()
        if isinstance(known, str):
            return [f"{where}: {known}"]
        return [f"{where}: {target.name} does not accept {flag}" for flag in flags if flag not in known]

    def check_script(self, target: Target, where: str) -> list[str]:
        path = self.root / target.name
        if not path.is_file():
            return [f"{where}: {target.name} does not exist"]
        errors, forwarding = [], []
        for lineno, line in logical_lines(path.read_text(), 1):
            try:
                commands = simple_commands(line)
            except ValueError:
                continue
            for words in commands:
                inner = project_target(words)
                forwards = any(w in ("$@", "$*") for w in words)
                if forwards:
                    forwarding.append(inner)
                if inner is not None and inner.kind != "script":
                    errors += self.check_entry(inner, f"{where}: {target.name}:{lineno}")
        if target.args and not forwarding:
            errors.append(f"{where}: {target.name} ignores its arguments {' '.join(target.args)}")
        for inner in forwarding:
            if inner is not None and inner.kind != "script":
                errors += self.check_entry(
                    Target(inner.kind, inner.name, target.args), f"{where}: arguments of {target.name}"
                )
        return errors

    def check(self, command: Command) -> list[str]:
        target = project_target(command.words)
        if target.kind == "script":
            return self.check_script(target, command.source)
        return self.check_entry(target, command.source)

    def check_markdown(self, path: Path) -> list[str]:
        commands, errors = collect_commands(path, self.root)
        for command in commands:
            errors += self.check(command)
        return errors


# ------------------------------------------------------------------------------ flag tables
# doc -> the entry point whose flags its tables list
FLAG_TABLES = {
    "docs/Training.md": ("file", "llava/train/train_mem.py"),
    "docs/Data.md": ("module", "llava.data.validate"),
}


def table_rows(path: Path):
    """(line, flag, default cell or None) for table rows whose first cell is a `--flag`."""
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.lstrip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(--[\w-]+)`", cells[0])
        if m:
            yield lineno, m.group(1), (cells[1] if len(cells) > 2 else None)


def same_default(cell: str, value) -> bool:
    """Whether a table's default cell shows `value`; a cell that is not one `literal` is prose."""
    m = re.fullmatch(r"`([^`]*)`", cell)
    if not m:
        return True
    text, value = m.group(1).strip().strip("\"'"), getattr(value, "value", value)  # enums: their value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return re.fullmatch(r"[-+0-9.eE]+", text) is not None and float(text) == float(value)
    return text == str(value)  # None, True/False, strings


def flag_table_errors(doc: Path, parser: argparse.ArgumentParser, must_list: set[str]) -> list[str]:
    """Table flags the parser lacks, defaults that differ from the parser's, flags not listed."""
    name = doc.name
    defaults = {opt: a.default for a in parser._actions for opt in a.option_strings}
    errors, listed = [], set()
    for lineno, flag, cell in table_rows(doc):
        listed.add(flag)
        if flag not in defaults:
            errors.append(f"{name}:{lineno}: {flag} is not accepted by the entry point")
        elif cell is not None and not same_default(cell, defaults[flag]):
            errors.append(f"{name}:{lineno}: {flag} defaults to {defaults[flag]!r}, the table says {cell}")
    errors += [f"{name}: no table row for {flag}" for flag in sorted(must_list - listed)]
    return errors


def own_train_flags() -> set[str]:
    """The trainer flags this project declares (not the ones inherited from transformers)."""
    from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments

    declared = set(TrainingArguments.__annotations__)  # the subclass body only
    names = {f.name for cls in (ModelArguments, DataArguments) for f in dataclasses.fields(cls) if f.init}
    names |= {f.name for f in dataclasses.fields(TrainingArguments) if f.init and f.name in declared}
    return {f"--{n}" for n in names}


def must_list(doc: str, parser: argparse.ArgumentParser) -> set[str]:
    if doc == "docs/Training.md":
        return own_train_flags()
    return {a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest != "help"}


# ------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def checker():
    return Checker(REPO)


def test_docs_exist():
    names = {p.name for p in DOCS}
    expected = {"Data.md", "Finetune_Custom_Data.md", "Training.md", "Serving.md", "Evaluation.md"}
    assert expected | {"MODEL_ZOO.md", "MIGRATING.md", "README.md"} <= names
    assert not (REPO / "docs" / "serving.md").exists(), "docs/Serving.md replaced docs/serving.md"


def test_every_documented_command_runs_with_its_flags(checker):
    errors, count = [], 0
    for doc in DOCS:
        commands, parse_errors = collect_commands(doc)
        count += len(commands)
        errors += parse_errors
        for command in commands:
            errors += checker.check(command)
    assert count >= 40, f"only {count} project commands found in the docs: is the collector broken?"
    assert not errors, "documented commands that do not match the code:\n" + "\n".join(errors)


def test_a_bad_doc_is_reported_with_file_and_line(checker, tmp_path):
    doc = tmp_path / "bad.md"
    doc.write_text(
        "# Bad\n\n"
        "```bash\n"
        "python -m llava.serve.cli --model-path m --image-file x.jpg \\\n"
        "    --no-such-flag 1\n"
        "bash scripts/v1_5/no_such_script.sh\n"
        "python -m llava.no_such_module --x 1\n"
        "```\n\n"
        "Also `python scripts/merge_lora_weights.py --model-path a --bogus` inline.\n\n"
        "```bash\n"
        "LAUNCH=torchrun bash scripts/v1_5/pretrain.sh --per_device_train_batch_size 8 --bad_flag 1\n"
        "bash scripts/setup.sh --whatever\n"
        "```\n"
    )
    errors = checker.check_markdown(doc)
    joined = "\n".join(errors)
    assert "bad.md:4: llava.serve.cli does not accept --no-such-flag" in joined
    assert "bad.md:6: scripts/v1_5/no_such_script.sh does not exist" in joined
    assert "bad.md:7: `python -m llava.no_such_module`: no such module" in joined
    assert "bad.md:10: scripts/merge_lora_weights.py does not accept --bogus" in joined
    assert (
        "bad.md:13: arguments of scripts/v1_5/pretrain.sh: llava/train/train_mem.py does not accept --bad_flag"
        in joined
    )
    assert "bad.md:14: scripts/setup.sh ignores its arguments --whatever" in joined
    assert len(errors) == 6, joined  # nothing else: --per_device_train_batch_size and the rest are fine


def test_good_commands_pass_and_are_collected(checker, tmp_path):
    doc = tmp_path / "good.md"
    doc.write_text(
        "```console\n"
        "$ CUDA_VISIBLE_DEVICES=0 python3 -m llava.eval.model_vqa_loader --model-path m \\\n"
        "    --question-file q.jsonl --answers-file a.jsonl --temperature 0 2>&1 | tee log\n"
        "$ deepspeed --num_gpus 2 llava/train/train_mem.py --mm_vision_select_layer -2 --bf16=True\n"
        "$ .venv/bin/python scripts/extract_mm_projector.py --model-path m --output p.bin\n"
        "```\n"
        "```python\npython -m llava.serve.cli --not-shell-so-not-checked\n```\n"
    )
    commands, errors = collect_commands(doc, tmp_path)
    assert [project_target(c.words).name for c in commands] == [
        "llava.eval.model_vqa_loader",
        "llava/train/train_mem.py",
        "scripts/extract_mm_projector.py",
    ]
    assert [c.source for c in commands] == ["good.md:2", "good.md:4", "good.md:5"]
    assert not errors and not checker.check_markdown(doc)


def test_parsers_are_the_real_ones(checker):
    # HfArgumentParser of the trainer: original, project and transformers flags, both spellings
    train = checker.options("file", "llava/train/train_mem.py")
    assert {"--tune_mm_mlp_adapter", "--skip_bad_samples", "--learning_rate", "--deepspeed"} <= train
    assert "--model-name-or-path" in train  # HfArgumentParser's second spelling
    assert {"--load-4bit", "--image-file", "--conv-mode"} <= checker.options("module", "llava.serve.cli")


@pytest.mark.parametrize("doc", sorted(FLAG_TABLES))
def test_flag_tables_match_the_parsers(checker, doc):
    kind, name = FLAG_TABLES[doc]
    parser = checker.parser(kind, name)
    assert not isinstance(parser, str), parser
    errors = flag_table_errors(REPO / doc, parser, must_list(doc, parser))
    assert not errors, "\n".join(errors)


def test_flag_table_check_finds_drift(checker, tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", type=int, default=3)
    parser.add_argument("--b", default="x")
    parser.add_argument("--c", action="store_true")
    doc = tmp_path / "t.md"
    doc.write_text(
        "| flag | default | meaning |\n| --- | --- | --- |\n| `--a` | `4` | m |\n| `--zz` | `1` | m |\n"
    )
    errors = flag_table_errors(doc, parser, {"--a", "--b", "--c"})
    assert errors == [
        "t.md:3: --a defaults to 3, the table says `4`",
        "t.md:4: --zz is not accepted by the entry point",
        "t.md: no table row for --b",
        "t.md: no table row for --c",
    ]


def test_relative_links_resolve():
    errors = []
    for doc in DOCS:
        for lineno, line in enumerate(doc.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                    continue
                if not (doc.parent / target.split("#")[0]).exists():
                    errors.append(f"{doc.relative_to(REPO)}:{lineno}: link to missing {target}")
    assert not errors, "\n".join(errors)
