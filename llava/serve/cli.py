"""Chat about one image in the terminal, answers streamed as they are generated.

    python -m llava.serve.cli --model-path liuhaotian/llava-v1.5-7b --image-file photo.jpg [--load-4bit]

Each line read from stdin is one user turn; an empty line or end of input quits. The
conversation template is the one the checkpoint was trained with (`conv_template` in its
config.json) unless --conv-mode is given; checkpoints without one fall back to the name-based guess.
"""

from __future__ import annotations

import argparse
import sys

from llava.constants import DEFAULT_IMAGE_TOKEN


def load_image(image_file: str):
    """A local path or an http(s) URL -> RGB PIL image (clear error when it is not an image)."""
    from llava.serve.images import decode_image_bytes, fetch_image_url

    if image_file.startswith(("http://", "https://")):
        data = fetch_image_url(image_file, f"--image-file {image_file}")
    else:
        try:
            with open(image_file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise SystemExit(f"--image-file {image_file}: cannot read it ({e.strerror})") from None
    return decode_image_bytes(data, f"--image-file {image_file}")


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def chat(
    runner, conv, image, temperature: float, max_new_tokens: int, debug: bool = False, stdin=None, stdout=None
):
    """The read-answer loop; returns the conversation when input ends."""
    from llava.serve.inference import RequestError

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    roles = ("user", "assistant") if conv.version == "mpt" else conv.roles
    first = True
    while True:
        stdout.write(f"{roles[0]}: ")
        stdout.flush()
        line = stdin.readline()
        inp = line.rstrip("\n")
        if not inp:
            stdout.write("exit...\n")
            return conv
        if first and image is not None:
            inp = DEFAULT_IMAGE_TOKEN + "\n" + inp
            first = False
        conv.append_message(conv.roles[0], inp)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        images = [image] * prompt.count(DEFAULT_IMAGE_TOKEN) if image is not None else []
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
    p.add_argument("--image-file", type=str, required=True, help="a local image or an http(s) URL")
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
    args = build_parser().parse_args(argv)
    image = load_image(args.image_file)  # fail fast, before the heavy imports

    from llava.conversation import choose_conv_mode, get_conv_template
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model
    from llava.serve.inference import ModelRunner

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
            f"{args.model_path} has no vision tower; the CLI chats about an image and needs a LLaVA model"
        )
    conv = get_conv_template(conv_mode, tokenizer)
    chat(runner, conv, image, args.temperature, args.max_new_tokens, args.debug)


if __name__ == "__main__":
    main()
