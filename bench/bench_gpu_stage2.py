"""Stage-2 training step of a LLaMA-7B-shaped LLaVA: tokens/s/GPU and MFU, padded vs packed.

    python bench/bench_gpu_stage2.py                 # GPU: 7B shapes, bf16, ~2 min on an H100
    python bench/bench_gpu_stage2.py --tiny          # CPU: tiny shapes, float32, checks the script

Model (random weights, built from configs directly on the device, nothing downloaded): LLaMA-7B
shapes (hidden 4096, 32 heads, intermediate 11008, vocab 32000; --layers cuts the layer count),
CLIP-L/336 tower shapes (24 layers, hidden 1024, patch 14, 336 px: 576 image tokens, frozen),
mlp2x_gelu projector. bf16 weights, gradient checkpointing, plain torch AdamW (fused) on the LLM
and projector (its states in bf16 too: one GPU cannot hold fp32 master weights for 7B).

Data: one global batch of --per-device x --world mix665k-like samples (lengths as
bench_padding.py counts them; 576 image tokens + text, cut at 2048), random token ids, random
pixels. The same samples run in every mode, one optimizer step per micro-batch (--world
micro-batches, as each of --world GPUs would run one):
- padded:   the original's modality-length grouping (megabatch sorted by length, split balanced),
            right padded, every sample with an image (a zero one for text-only samples);
- packed:   `--packing True`: first-fit-decreasing rows of <= 2048 tokens dealt to the micro-batches.
Each mode names its attention: sdpa (padded: SDPA with the padding mask; packed: rows with the
block-diagonal mask transformers builds from the restarting position ids), torch_varlen
(flash-attention varlen kernel shipped in PyTorch: packed samples end to end, padded batches
unpadded), flex_attention (packed rows; compiles). A `+liger` suffix (`packed:torch_varlen+liger`)
runs with Liger's RMSNorm/SwiGLU/RoPE kernels applied as `--use_liger_kernel True` applies them
(llava.train.liger; needs liger-kernel and a GPU); once applied they stay, so such modes come last.
A `+chunked` suffix (`packed:torch_varlen+chunked`, `...+liger+chunked`) takes the loss as
`--loss_chunk_tokens` does (llava.model.chunked_loss, --chunk-tokens labelled positions at a time:
no [tokens, vocab] logits). `--uncheckpointed-layers N` runs the last N decoder layers without
activation checkpointing (selective checkpointing: less recomputation, more memory); a candidate
for issue 21's MFU target, measured here before the trainer gets a flag for it.

MFU = model FLOPs of the real tokens / time / peak. Model FLOPs: 6 x LLM parameters (without the
input embedding) per token + causal attention 6 x layers x hidden x n^2 per sample + per real image
the frozen tower's forward (2 x parameters x 577 + 4 x layers x hidden x 577^2) and the
projector (6 x parameters x 576); recomputation of gradient checkpointing is not counted, nor is
padding. Peak: --peak-tflops (790: bf16 dense matmul measured on H100/H200, see STACK-NOTES).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SHAPES = {
    "7b": dict(hidden=4096, heads=32, inter=11008, layers=32, vocab=32000, max_len=2048),
    "tiny": dict(hidden=64, heads=4, inter=128, layers=2, vocab=1000, max_len=256),
    "small": dict(hidden=256, heads=4, inter=688, layers=4, vocab=32000, max_len=256),
}
FLAT = ("torch_varlen", "flash_attention_2", "flash_attention_3")
TOWER = {
    "7b": dict(hidden=1024, heads=16, inter=4096, layers=24, image=336, patch=14),
    "tiny": dict(hidden=32, heads=4, inter=64, layers=2, image=32, patch=8),
    "small": dict(hidden=64, heads=4, inter=128, layers=2, image=96, patch=12),
}


def build_model(shape: dict, tower: dict, layers: int, device, dtype):
    """LlavaLlamaForCausalLM with a CLIP tower and mlp2x_gelu projector, random, built on `device`."""
    from transformers import AutoModel, AutoModelForCausalLM, CLIPVisionConfig

    from llava.model import LlavaLlamaConfig, register_auto_classes

    register_auto_classes()  # AutoModelForCausalLM below needs the llava_* types
    cfg = LlavaLlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["inter"],
        num_hidden_layers=layers,
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=4096,
        mm_vision_tower="random-clip",  # built below, never read from disk (delay_load)
        mm_hidden_size=tower["hidden"],
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        tie_word_embeddings=False,
        use_cache=False,
    )
    cfg.tokenizer_model_max_length = shape["max_len"]
    vcfg = CLIPVisionConfig(
        hidden_size=tower["hidden"],
        intermediate_size=tower["inter"],
        num_hidden_layers=tower["layers"],
        num_attention_heads=tower["heads"],
        image_size=tower["image"],
        patch_size=tower["patch"],
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        clip = AutoModel.from_config(vcfg, dtype=dtype, attn_implementation="sdpa")
    model.get_vision_tower().adopt(clip.eval(), image_processor=None)
    model.get_model().mm_projector.to(device=device, dtype=dtype)
    return model


def global_batch(n: int, max_len: int, n_img: int, seed: int = 0) -> list[int]:
    """Signed LLM lengths of `n` mix665k-like samples (bench_padding.mix_lengths), text scaled by
    max_len / 2048 and images given `n_img` tokens for models smaller than the 7B / CLIP-L shapes."""
    from bench_padding import mix_lengths

    pool = mix_lengths(max(n, 64), 2048, seed=seed)[:n]
    scale = max_len / 2048
    out = []
    for x in pool:
        text = round((abs(x) - (576 if x > 0 else 0)) * scale)
        total = max(min(text + (n_img if x > 0 else 0), max_len), 8)
        out.append(total if x > 0 else -total)
    return out


def make_instances(lengths: list[int], n_img: int, image_px: int, vocab: int, seed: int = 0) -> list[dict]:
    """Instances as the dataset gives them: BOS, [image placeholder], text; second half targets."""
    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    g = torch.Generator().manual_seed(seed)
    out = []
    for signed in lengths:
        has_image, total = signed > 0, abs(signed)
        n_text = max(total - (n_img if has_image else 0), 4)
        ids = torch.randint(3, vocab, (n_text,), generator=g)
        ids[0] = 1
        if has_image:
            ids = torch.cat([ids[:1], torch.tensor([IMAGE_TOKEN_INDEX]), ids[1:]])
        labels = torch.where(torch.arange(len(ids)) >= len(ids) // 2, ids, IGNORE_INDEX)
        labels[ids == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
        image = (
            torch.rand(3, image_px, image_px, generator=g)
            if has_image
            else torch.zeros(3, image_px, image_px)
        )
        out.append(dict(input_ids=ids, labels=labels, image=image))
    return out


def micro_batches(
    lengths: list[int], world: int, max_len: int, packed: bool, layout="flat"
) -> list[list[int]]:
    """The global batch's sample indices per micro-batch, as the project's samplers deal them."""
    from llava.data.packing import first_fit_decreasing
    from llava.train.packed_sampler import deal_rows
    from llava.train.sampler import split_balanced

    sizes = [min(abs(n), max_len) for n in lengths]
    idx = list(range(len(lengths)))
    if packed:
        return deal_rows(first_fit_decreasing(idx, sizes, max_len), sizes, world, max_len, layout)
    return split_balanced(sorted(idx, key=lambda i: -sizes[i]), sizes, world)


def model_flops(batch_lengths: list[int], n_images: int, shape, tower, layers, n_llm, n_vis, n_proj) -> float:
    """Useful FLOPs of one training step (see the module docstring)."""
    tokens = sum(batch_lengths)
    attn = 6 * layers * shape["hidden"] * sum(n * n for n in batch_lengths)
    patches = (tower["image"] // tower["patch"]) ** 2
    vis = 2 * n_vis * (patches + 1) + 4 * tower["layers"] * tower["hidden"] * (patches + 1) ** 2
    return 6 * n_llm * tokens + attn + n_images * (vis + 6 * n_proj * patches)


def run_mode(model, optimizer, batches, device, warmup: int, chunk: int = 0) -> tuple[float, float]:
    """(seconds for one pass over `batches` after `warmup` untimed steps, mean loss); `chunk` > 0: the
    chunked loss of that many labelled positions at a time."""
    extra = {"loss_chunk_tokens": chunk} if chunk else {}

    def step(batch):
        out = model(**batch, **extra)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.detach()

    for i in range(warmup):
        step(batches[i % len(batches)])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    losses = [step(b) for b in batches]
    sync()
    return time.perf_counter() - t0, float(torch.stack(losses).float().mean())


def to_device(batch: dict, device, dtype) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, non_blocking=True)
        else:
            out[k] = v
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (float32)")
    parser.add_argument("--layers", type=int, default=None, help="LLM layers (default: all 32)")
    parser.add_argument("--per-device", type=int, default=8, help="samples per micro-batch (unpacked)")
    parser.add_argument("--world", type=int, default=8, help="micro-batches in the global batch")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--modes",
        default="padded:sdpa,padded:torch_varlen,packed:sdpa,packed:torch_varlen",
        help="batching:attention,...",
    )
    parser.add_argument(
        "--chunk-tokens", type=int, default=4096, help="labelled positions per chunk (+chunked)"
    )
    parser.add_argument(
        "--uncheckpointed-layers",
        type=int,
        default=0,
        help="the last N decoder layers keep their activations",
    )
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from llava.data.collator import DataCollatorForSupervisedDataset
    from llava.data.packing import collate_packed
    from llava.model.varlen_attention import register_varlen_attention, varlen_kernel

    t_start = time.perf_counter()
    kind = "tiny" if args.tiny else "7b"
    shape, tower = SHAPES[kind], TOWER[kind]
    layers = args.layers or shape["layers"]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_img = (tower["image"] // tower["patch"]) ** 2
    max_len = shape["max_len"]
    register_varlen_attention()

    n = args.per_device * args.world
    lengths = global_batch(n, max_len, n_img, seed=args.seed)
    instances = make_instances(lengths, n_img, tower["image"], shape["vocab"], seed=args.seed)
    tok = type("Tok", (), {"pad_token_id": 0, "model_max_length": max_len})()
    padded_collate = DataCollatorForSupervisedDataset(tokenizer=tok)
    sizes = [min(abs(x), max_len) for x in lengths]
    real_tokens = sum(sizes)
    n_real_images = sum(x > 0 for x in lengths)

    model = build_model(shape, tower, layers, device, dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    decoder_layers = list(model.get_model().layers)
    for layer in decoder_layers[len(decoder_layers) - args.uncheckpointed_layers :]:
        layer.gradient_checkpointing = False  # (transformers' GradientCheckpointingLayer reads it per call)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0, **fused)
    n_llm = sum(
        p.numel()
        for n_, p in model.named_parameters()
        if "vision_tower" not in n_ and "mm_projector" not in n_
    )
    n_llm -= model.get_input_embeddings().weight.numel()
    n_vis = sum(p.numel() for p in model.get_vision_tower().parameters())
    n_proj = sum(p.numel() for p in model.get_model().mm_projector.parameters())
    flops = model_flops(sizes, n_real_images, shape, tower, layers, n_llm, n_vis, n_proj)
    build_s = time.perf_counter() - t_start

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"device {name}; torch {torch.__version__}; LLM {kind} shapes, {layers} of {shape['layers']} layers "
        f"({(n_llm + model.get_input_embeddings().weight.numel()) / 1e9:.2f}B params), tower {tower['layers']} "
        f"layers {tower['image']}px ({n_img} tokens), {str(dtype).replace('torch.', '')}, gradient checkpointing, "
        f"AdamW; torch varlen kernel: {'yes' if varlen_kernel() else 'no'}"
    )
    print(
        f"global batch: {n} samples ({n_real_images} with an image), {real_tokens} real tokens, "
        f"{args.world} micro-batches; setup {build_s:.0f}s"
    )
    check_attention(model, instances, lengths, args, max_len, n_img, padded_collate, device, dtype)
    results = []
    modes = args.modes.split(",")
    first_liger = next((i for i, m in enumerate(modes) if "+liger" in m), len(modes))
    if not all("+liger" in m for m in modes[first_liger:]):
        parser.error("--modes: the +liger modes must come after all the others")
    for mode in modes:
        base, *options = mode.split("+")
        if set(options) - {"liger", "chunked"}:
            parser.error(f"--modes: {mode}: the suffixes are +liger and +chunked")
        batching, attn = base.split(":")
        try:
            if "liger" in options and not getattr(model, "_liger_applied", False):
                liger_check(model, instances, lengths, args, max_len, n_img, attn, device, dtype)
            model.set_attn_implementation(attn)
            packed = batching == "packed"
            groups = micro_batches(lengths, args.world, max_len, packed, "flat" if attn in FLAT else "rows")
            if packed:
                batches = [collate_packed([instances[i] for i in g], 0, max_len, n_img) for g in groups]
            else:
                batches = [padded_collate([instances[i] for i in g]) for g in groups]
            computed = computed_tokens(groups, sizes, max_len, packed, flat=attn in FLAT)
            batches = [to_device(b, device, dtype) for b in batches]
            chunk = args.chunk_tokens if "chunked" in options else 0
            seconds, loss = run_mode(model, optimizer, batches, device, args.warmup, chunk)
            results.append(
                (
                    mode,
                    real_tokens / seconds,
                    flops / seconds / (args.peak_tflops * 1e12),
                    real_tokens / computed,
                    loss,
                    seconds,
                )
            )
        except Exception as e:  # report and go on with the next mode
            traceback.print_exc(limit=3)
            results.append((mode, None, None, None, None, f"{type(e).__name__}: {str(e)[:80]}"))
        finally:
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    base = next((r[1] for r in results if r[1]), None)
    on_gpu = device.type == "cuda"
    head = f"{'mode':22s} {'tokens/s/GPU':>13s} {'x first':>8s} {'MFU':>7s} {'real/computed':>14s} {'loss':>7s} {'time':>7s}"
    print("\n" + head)
    for mode, tps, mfu, eff, loss, seconds in results:
        if tps is None:
            print(f"{mode:22s} failed: {seconds}")
            continue
        mfu_text = f"{mfu:7.1%}" if on_gpu else f"{'-':>7s}"
        print(f"{mode:22s} {tps:13.0f} {tps / base:8.2f} {mfu_text} {eff:14.1%} {loss:7.3f} {seconds:6.1f}s")
    if on_gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"MFU over {args.peak_tflops:.0f} TFLOP/s bf16 dense; peak memory {peak:.1f} GiB")
        print(
            f"normalising {args.per_device} uint8 images on the GPU: {normalise_ms(args.per_device, tower, device):.2f} ms"
        )
    print(f"total {time.perf_counter() - t_start:.0f}s")


@torch.no_grad()
def liger_check(model, instances, lengths, args, max_len, n_img, attn, device, dtype) -> None:
    """Apply Liger's kernels to `model` and print the loss of packed micro-batch 0 before and after."""
    from llava.data.packing import collate_packed
    from llava.train.liger import apply_liger_kernels

    model.set_attn_implementation(attn)
    group = micro_batches(lengths, args.world, max_len, True)[0]
    batch = to_device(collate_packed([instances[i] for i in group], 0, max_len, n_img), device, dtype)
    before = model(**batch).loss.item()
    used = apply_liger_kernels(model)
    model._liger_applied = True
    print(
        f"liger {used}: packed micro-batch 0 loss {before:.4f} before, {model(**batch).loss.item():.4f} after"
    )


@torch.no_grad()
def check_attention(model, instances, lengths, args, max_len, n_img, padded_collate, device, dtype) -> None:
    """Loss of the first micro-batch under each attention of the run's modes: they must agree."""
    from llava.data.packing import collate_packed

    modes = [m.split(":") for m in args.modes.split(",") if "+" not in m]
    for batching in ("padded", "packed"):
        attns = [a for b, a in modes if b == batching]
        if len(attns) < 2:
            continue
        group = micro_batches(lengths, args.world, max_len, batching == "packed")[0]  # same samples for all
        items = [instances[i] for i in group]
        batch = collate_packed(items, 0, max_len, n_img) if batching == "packed" else padded_collate(items)
        batch = to_device(batch, device, dtype)
        losses = []
        for attn in attns:
            try:
                model.set_attn_implementation(attn)
                losses.append(f"{attn} {model(**batch).loss.item():.4f}")
            except Exception as e:  # reported again, with its traceback, when the mode runs
                losses.append(f"{attn} failed ({type(e).__name__})")
        print(f"check, {batching} micro-batch 0 loss: " + ", ".join(losses))


def normalise_ms(n: int, tower: dict, device) -> float:
    """Milliseconds the vision tower spends turning a batch of `n` uint8 images (what the training
    loader sends) into normalised floats on `device` (llava.images.transform.normalise_levels)."""
    from llava.images.transform import normalise_levels

    levels = torch.randint(0, 256, (n, 3, tower["image"], tower["image"]), dtype=torch.uint8, device=device)
    table = torch.randn(3, 256, device=device)
    normalise_levels(levels, table)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        normalise_levels(levels, table)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 10 * 1e3


def computed_tokens(groups, sizes, max_len, packed: bool, flat: bool) -> int:
    """Positions the linear layers process: padded to each micro-batch's widest row or sample;
    packed samples end to end (flat) compute only real tokens."""
    from llava.data.packing import next_fit

    total = 0
    for g in groups:
        if not packed:
            total += len(g) * max(sizes[i] for i in g)
            continue
        rows = [sum(sizes[g[k]] for k in row) for row in next_fit([sizes[i] for i in g], max_len)]
        total += sum(rows) if flat else len(rows) * max(rows)
    return total


if __name__ == "__main__":
    main()
