"""`python -m llava.serve.cli` driven through stdin (two turns about waterview.jpg) and through a
pseudo-terminal, as a person types: readline line editing and history, Ctrl-D and Ctrl-C ending it
without a traceback (Ctrl-C with status 130), and bad --image-file values as one-line errors."""

import ast
import os
import select
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.serve.processes import free_port
from tests.serve.stack import REPO, WATERVIEW

ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
LEFT, UP, CTRL_C, CTRL_D = "\x1b[D", "\x1b[A", "\x03", "\x04"


def run_cli(args, stdin, timeout=180):
    env = {**os.environ, **ENV}
    return subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def _debug_records(stdout: str) -> list[dict]:
    return [ast.literal_eval(line) for line in stdout.splitlines() if line.startswith("{'prompt'")]


@pytest.mark.slow
def test_two_turns_about_waterview(tiny_llava):
    args = ["--model-path", str(tiny_llava), "--image-file", str(WATERVIEW), "--device", "cpu"]
    args += ["--temperature", "0", "--max-new-tokens", "8", "--debug"]
    r = run_cli(args, "What is in the picture?\nIs the water calm?\n")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    turns = [line for line in out.splitlines() if line.startswith("USER: ")]
    assert len(turns) == 3 and all(t.startswith("USER: ASSISTANT: ") for t in turns[:2]), out
    assert turns[2] == "USER: exit..."
    first, second = _debug_records(out)
    # Template inferred from the name (llava-v1.5-* -> llava_v1); the image only in the first turn.
    assert first["prompt"].endswith("USER: <image>\nWhat is in the picture? ASSISTANT:")
    answer1 = first["outputs"].strip()
    assert second["prompt"].endswith(
        f"<image>\nWhat is in the picture? ASSISTANT: {answer1}</s>USER: Is the water calm? ASSISTANT:"
    )
    assert second["prompt"].count("<image>") == 1

    # The streamed answer is what plain greedy `generate` gives for the same prompt and image.
    from PIL import Image

    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tok, model, proc, _ = load_pretrained_model(str(tiny_llava), None, device="cpu")
    ids = tokenizer_image_token(first["prompt"], tok, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 1
    image = Image.open(WATERVIEW).convert("RGB")
    pixels = process_images([image], proc, model.config)
    with torch.inference_mode():
        new = model.generate(ids, images=pixels, image_sizes=[image.size], do_sample=False, max_new_tokens=8)
    expected = tok.decode(new[0], skip_special_tokens=False).split("</s>")[0].strip()
    assert answer1 == expected


def test_missing_image_file_is_a_clear_error(tmp_path):
    r = run_cli(["--model-path", str(tmp_path), "--image-file", str(tmp_path / "nope.jpg")], "", timeout=60)
    assert r.returncode != 0 and "nope.jpg: cannot read it" in r.stderr


def test_a_non_image_or_unreachable_image_file_is_one_line_naming_it(tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("shopping list: milk, eggs")
    url = f"http://127.0.0.1:{free_port()}/cat.jpg"  # nothing listens there
    for bad, why in ((notes, "is not a readable image"), (url, "could not fetch")):
        r = run_cli(["--model-path", str(tmp_path), "--image-file", str(bad)], "", timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"--image-file {bad}") and why in line, line


NEXT_PROMPT = "}\r\n\r\nUSER: "  # the end of a --debug record, then the prompt on the pty


class Terminal:
    """The CLI on a pseudo-terminal (its controlling terminal, so Ctrl-C is a real SIGINT)."""

    def __init__(self, args):
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.chdir(REPO)
            os.execvpe(
                sys.executable, [sys.executable, "-m", "llava.serve.cli", *args], {**os.environ, **ENV}
            )
        self.out = ""

    def read_until(self, text: str, timeout: float = 180, start: int = 0) -> int:
        """Read output until `text` appears after index `start`; its index."""
        deadline = time.monotonic() + timeout
        while (i := self.out.find(text, start)) < 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s; output:\n{self.out[-3000:]}")
            if select.select([self.fd], [], [], 0.5)[0]:
                try:
                    self.out += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the child exited
                    raise AssertionError(
                        f"the CLI exited before {text!r}; output:\n{self.out[-3000:]}"
                    ) from None
        return i

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def exit_code(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with_output = select.select([self.fd], [], [], 0.2)[0]
            if with_output:
                try:
                    self.out += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"the CLI did not exit; output:\n{self.out[-3000:]}")


def _cli_args(tiny_llava):
    return ["--model-path", str(tiny_llava), "--image-file", str(WATERVIEW), "--device", "cpu"] + [
        "--temperature", "0", "--max-new-tokens", "4", "--debug"
    ]  # fmt: skip


@pytest.mark.slow
def test_arrow_keys_edit_the_line_and_recall_history_then_ctrl_d_quits(tiny_llava):
    t = Terminal(_cli_args(tiny_llava))
    at = t.read_until("USER: ")
    t.type("abc" + LEFT + LEFT + "X\r")  # the cursor moves two left: "aXbc", not "abc^[[D^[[DX"
    # The next prompt comes after the --debug record, which holds "USER: " itself: a Ctrl-D typed
    # before readline has put the terminal in raw mode is the line discipline's EOF, and reaches
    # readline as a NUL byte, not as the end of input.
    at = t.read_until(NEXT_PROMPT, start=t.read_until("{'prompt'", start=at))
    t.type(UP + "\r")  # the previous question again, from readline's history
    at = t.read_until(NEXT_PROMPT, start=t.read_until("{'prompt'", start=at))
    t.type(CTRL_D)
    assert t.exit_code() == 0, t.out[-2000:]
    records = [ast.literal_eval(line.strip()) for line in t.out.splitlines() if line.startswith("{'prompt'")]
    first, second = (r["prompt"] for r in records)
    assert first.endswith("USER: <image>\naXbc ASSISTANT:"), first
    assert second.endswith("USER: aXbc ASSISTANT:") and second.count("aXbc") == 2, second
    assert "\x1b" not in first + second and "Traceback" not in t.out


@pytest.mark.slow
def test_ctrl_c_exits_130_without_a_traceback(tiny_llava):
    t = Terminal(_cli_args(tiny_llava))
    t.read_until("USER: ")
    t.type("half a quest")
    # A Ctrl-C in the same instant as the keys can flush them between readline's select() and its
    # read(), which then waits for the next key: type it once the line shows them, as a person would.
    t.read_until("half a quest")
    t.type(CTRL_C)
    assert t.exit_code() == 130, t.out[-2000:]
    assert "Traceback" not in t.out and "KeyboardInterrupt" not in t.out


def test_ctrl_c_taken_by_another_thread_still_interrupts_the_main_threads_wait():
    """The kernel may hand a Ctrl-C to any thread; one taken by a helper thread still ends the main
    thread's select() (as readline waits for a key) with a KeyboardInterrupt, and only one."""
    code = textwrap.dedent(
        """
        import os, select, signal, sys, threading, time
        from llava.serve.interrupts import deliver_sigint_to_main_thread
        if sys.argv[1] == "forward":
            assert deliver_sigint_to_main_thread()
        def helper():  # takes the signal itself, as the kernel may choose it, while the main thread waits
            time.sleep(0.5)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        threading.Thread(target=helper, daemon=True).start()
        r, w = os.pipe()
        start = time.monotonic()
        try:
            select.select([r], [], [], 6)
            print("not interrupted")
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - start:.1f}s")
        try:
            time.sleep(1.0)  # no second KeyboardInterrupt follows
            print("one only")
        except KeyboardInterrupt:
            print("a second one")
        """
    )
    def run(mode):
        out = subprocess.run([sys.executable, "-c", code, mode], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def waited(out):
        assert out.startswith("interrupted after") and "one only" in out, out
        return float(out.split()[2].rstrip("s"))

    assert waited(run("plain")) > 5  # before: heard only when the wait ended (readline's: at Enter)
    assert waited(run("forward")) < 3


def test_the_forwarding_is_left_out_without_a_terminal():
    """Called on pipes (as the tests and programs embedding the CLI's chat do), the CLI leaves the
    process's SIGINT handling alone: it is installed only for readline on a terminal."""
    import signal

    from llava.serve.cli import main

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit):  # (argparse: no --image-file)
        main(["--model-path", "nowhere"])
    assert signal.getsignal(signal.SIGINT) is before and signal.set_wakeup_fd(-1) == -1
