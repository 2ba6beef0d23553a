"""Chat about images or a video in the terminal, answers streamed as they are generated.

    python -m llava.serve.cli --model-path liuhaotian/llava-v1.5-7b --image-file photo.jpg [--load-4bit]
    python -m llava.serve.cli --model-path PATH --image-file a.jpg --image-file b.jpg   # several images
    python -m llava.serve.cli --model-path PATH --video-file clip.mp4                    # or a frames folder

Each line read from stdin is one user turn; an empty line or end of input (Ctrl-D) quits, Ctrl-C
quits with status 130, neither with a traceback. On a terminal the line is read with readline: the
arrow keys edit the line, and up/down recall earlier questions. The first turn
gets one `<image>` per image (in the order given), or one for the video, at its front. A video's
frames are sampled as the model was trained (`frames_upbound` in its config, 32 when it has none). The
conversation template is the one the checkpoint was trained with (`conv_template` in its
config.json) unless --conv-mode is given; checkpoints without one fall back to the name-based guess.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.utils.collector import collection_paused, frozen

INTERRUPTED = 130  # the exit status of a program stopped by Ctrl-C (128 + SIGINT)


def load_image(image_file: str):
    """A local path or an http(s) URL -> RGB PIL image; SystemExit with one line naming the file when
    it cannot be read or fetched, or is no image."""
    from llava.serve.images import ImageInputError, decode_image_bytes, fetch_image_url

    what = f"--image-file {image_file}"
    try:
        if image_file.startswith(("http://", "https://")):
            data = fetch_image_url(image_file, what)
        else:
            with open(image_file, "rb") as f:
                data = f.read()
        return decode_image_bytes(data, what)
    except OSError as e:
        raise SystemExit(f"{what}: cannot read it ({e.strerror})") from None
    except ImageInputError as e:
        raise SystemExit(str(e)) from None


def line_reader(stdin, stdout):
    """`read(prompt) -> line or None at end of input`. On a terminal it is `input()` with readline
    loaded, so arrow keys edit the line and recall earlier ones (instead of arriving as escape codes);
    otherwise (a pipe, a test) plain reads of `stdin`."""
    if stdin is sys.stdin and stdin.isatty():
        with contextlib.suppress(ImportError):  # (no readline on Windows: plain input() then)
            import readline  # noqa: F401 - importing it gives input() line editing and history

        def read_tty(prompt: str) -> str | None:
            try:
                return input(prompt)
            except EOFError:
                stdout.write("\n")
                return None

        return read_tty

    def read(prompt: str) -> str | None:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        return line.rstrip("\n") if line else None

    return read


def check_video(path: str) -> None:
    """Fail fast (before the model loads) when `path` is no readable video or frames folder."""
    from llava.images.video import VideoError, probe_video

    try:
        probe_video(path)
    except VideoError as e:
        raise SystemExit(f"--video-file {path}: {e}") from None


def load_video_file(path: str, model_cfg) -> list:
    """The frames of `path` sampled as the model was trained (llava.images.inputs.load_video)."""
    from llava.images.inputs import load_video
    from llava.images.video import VideoError

    try:
        return load_video(path, model_cfg)
    except VideoError as e:
        raise SystemExit(f"--video-file {path}: {e}") from None


def chat(
    runner,
    conv,
    visuals,
    temperature: float,
    max_new_tokens: int,
    debug: bool = False,
    stdin=None,
    stdout=None,
):
    """The read-answer loop; returns the conversation when input ends.

    `visuals`: None, one PIL image, or a list of visuals (a PIL image each, or a list of PIL frames
    for a video), asked about in the first turn."""
    from llava.serve.inference import RequestError

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    read = line_reader(stdin, stdout)
    if visuals is None:
        visuals = []
    elif not isinstance(visuals, list):
        visuals = [visuals]
    roles = ("user", "assistant") if conv.version == "mpt" else conv.roles
    first = True
    while True:
        inp = read(f"{roles[0]}: ")
        if not inp:
            stdout.write("exit...\n")
            return conv
        if first and visuals:
            inp = (DEFAULT_IMAGE_TOKEN + "\n") * len(visuals) + inp
            first = False
        conv.append_message(conv.roles[0], inp)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        images = list(visuals)
        if len(visuals) == 1:  # as the original: the one image for every <image> in the prompt
            images = visuals * prompt.count(DEFAULT_IMAGE_TOKEN)
        stdout.write(f"{roles[1]}: ")
        stdout.flush()
        try:
            prepared = runner.prepare(
                {
                    "prompt": prompt,
                    "images": images,
                    "temperature": temperature,
                    "max_new_tokens": max_new_tokens,
                    "stop": conv.stop_str,
                }
            )
        except RequestError as e:
            stdout.write(f"\n[error] {e}\n")
            conv.messages.pop()
            conv.messages.pop()
            continue
        shown = ""
        for chunk in runner.stream(prepared):
            if chunk["error_code"] != 0:
                stdout.write(f"\n[error] {chunk['text']}")
                break
            answer = chunk["text"][len(prompt) :].lstrip()
            stdout.write(answer[len(shown) :])
            stdout.flush()
            shown = answer
        stdout.write("\n")
        conv.messages[-1][-1] = shown.strip()
        if debug:
            stdout.write(f"\n{ {'prompt': prompt, 'outputs': shown} }\n\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument(
        "--image-file",
        type=str,
        action="append",
        default=None,
        help="a local image or an http(s) URL; give it several times for several images (in order)",
    )
    p.add_argument(
        "--video-file",
        type=str,
        default=None,
        help="a video file (mp4, webm, ...) or a folder of frame images, instead of --image-file",
    )
    p.add_argument(
        "--device", type=str, default=None, help="cuda, cpu or mps (default: cuda if available, else mps/cpu)"
    )
    p.add_argument(
        "--conv-mode",
        type=str,
        default=None,
        help="conversation template (default: conv_template in the checkpoint's config, else from its name)",
    )
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv=None) -> None:
    """The CLI; Ctrl-C (while loading, reading or answering) exits with status 130, no traceback."""
    if sys.stdin.isatty():
        from llava.serve.interrupts import deliver_sigint_to_main_thread

        # readline's wait for a key hears a Ctrl-C only on the main thread: forward one that another
        # thread (tqdm's, the batching engine's) takes. Installed first, before any thread exists, and
        # only with a terminal: it sets process-wide signal state, which a program calling main() on
        # pipes (the tests) keeps as its own.
        deliver_sigint_to_main_thread()
    try:
        run(argv)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stderr.write("interrupted\n")
        raise SystemExit(INTERRUPTED) from None


def run(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.image_file) == bool(args.video_file):
        parser.error("give --image-file (one or more times) or --video-file")
    images = [load_image(f) for f in args.image_file or []]  # fail fast, before the heavy imports
    if args.video_file:
        check_video(args.video_file)

    with collection_paused():  # the heavy imports (torch, transformers): a million objects, no garbage
        import llava.model.builder  # noqa: F401
        import llava.serve.inference  # noqa: F401
    with frozen():  # the collector's passes skip those objects while the model loads and answers
        _chat(args, images)


def _chat(args, images: list) -> None:
    """Load the model and chat about `images` (or the video of --video-file) until EOF."""
    from llava.conversation import choose_conv_mode, get_conv_template
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model
    from llava.serve.inference import ModelRunner, default_device

    device = args.device or default_device()
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        args.model_path, args.model_base, model_name, args.load_8bit, args.load_4bit, device=device
    )
    try:
        conv_mode = choose_conv_mode(args.conv_mode, model.config, model_name, multimodal=True)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    runner = ModelRunner(tokenizer, model, image_processor, context_len, model_name, conv_template=conv_mode)
    if not runner.is_multimodal:
        raise SystemExit(
            f"{args.model_path} has no vision tower; the CLI chats about images and needs a LLaVA model"
        )
    conv = get_conv_template(conv_mode, tokenizer)
    visuals = images if images else [load_video_file(args.video_file, model.config)]
    try:
        chat(runner, conv, visuals, args.temperature, args.max_new_tokens, args.debug)
    finally:
        # The batching engine's thread stops before the interpreter does: a daemon thread still inside
        # a torch op at exit aborts the process ("terminate called without an active exception").
        runner.close()


if __name__ == "__main__":
    main()
