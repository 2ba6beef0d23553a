"""llava-hf NeXT / OneVision: export, logit parity with transformers' LlavaNext / LlavaOnevision, import back.

Both sides get the same pixel tensors; transformers' prompt holds one <image>/<video> token per feature row
and its image_sizes are (height, width), ours (width, height). fp32 tiny random models.
"""

import json
import math

import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
)

from llava.constants import IMAGE_TOKEN_INDEX
from llava.images.grid import anyres_crop_count
from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM, LlavaQwen2ForCausalLM
from llava.model.hf_next_format import (
    export_to_llava_next,
    export_to_onevision,
    hf_format_for,
    import_from_hf_next,
    llava_from_hf_next,
)
from llava.testing.tiny import make_tiny_llm
from tests.model_helpers import build_tiny_llava

TOL = 1e-5
# (width, height): grids 1x2, 2x1, 2x2, 3x1 of 32-px tiles
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32]]
# (width, height). Chosen so that LLaVA-NeXT's int() and transformers' round(x, 7) unpad alike (checked below);
# they cover every grid, both unpad directions and no unpadding at all (64 x 64).
SIZES = [(48, 24), (20, 50), (64, 40), (90, 30), (64, 64), (33, 71)]
PROMPT = [1, 3148, 1001, 29901, IMAGE_TOKEN_INDEX, 13, 5618, 338, 445, 29973]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is faster than two that spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_siglip(folder):
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=8)
    SiglipVisionModel(SiglipVisionConfig(image_size=32, **cfg)).save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def _model(kit, cls, llm, tower, aspect, layer=-2):
    vision = dict(vision_tower=tower, mm_patch_merge_type="spatial_unpad", mm_vision_select_layer=layer)
    m = build_tiny_llava(kit, cls=cls, llm_path=llm, **vision)
    fields = dict(image_aspect_ratio=aspect, image_grid_pinpoints=PINPOINTS, conv_template="chatml_direct")
    fields.update(mm_newline_position="one_token", mm_spatial_pool_stride=2, mm_spatial_pool_mode="bilinear")
    for k, v in fields.items():
        setattr(m.config, k, v)
    return m


@pytest.fixture(scope="module")
def models(tiny_kit, tmp_path_factory):
    root = tmp_path_factory.mktemp("next-kit")
    mistral = make_tiny_llm(root / "mistral", arch="mistral", tokenizer_dir=tiny_kit.tokenizer, seed=2)
    qwen2 = make_tiny_llm(root / "qwen2", arch="qwen2", tokenizer_dir=tiny_kit.tokenizer, seed=3)
    siglip = _tiny_siglip(root / "siglip")
    clip = str(tiny_kit.vision)
    return {
        # LlavaNext: CLIP (select strategy default) and SigLIP (full) towers.
        "next_llama_clip": _model(tiny_kit, LlavaLlamaForCausalLM, None, clip, "anyres"),
        "next_mistral_siglip": _model(tiny_kit, LlavaMistralForCausalLM, mistral, siglip, "anyres"),
        # OneVision: anyres_max_2 shrinks 3- and 4-tile images; tower's last layer (-1) as OneVision's.
        "ov_qwen2_siglip": _model(tiny_kit, LlavaQwen2ForCausalLM, qwen2, siglip, "anyres_max_2", layer=-1),
        "ov_llama_clip": _model(tiny_kit, LlavaLlamaForCausalLM, None, clip, "anyres"),
    }


@pytest.fixture(scope="module")
def exported(models, tiny_kit, tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer)
    out = {}
    for name, m in models.items():
        nxt = name.startswith("next")
        folder = (export_to_llava_next if nxt else export_to_onevision)(
            m, tok, tmp_path_factory.mktemp(name), chat_template="{{ messages }}"
        )
        cls = LlavaNextForConditionalGeneration if nxt else LlavaOnevisionForConditionalGeneration
        out[name] = (folder, cls.from_pretrained(folder, dtype=torch.float32).eval())
    return out


def _pixels(n, seed):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _crops(size, seed):
    return _pixels(anyres_crop_count(size, PINPOINTS, 32), seed)


def _ours(model, ids, images, sizes, modalities=None, mask=None):
    with torch.no_grad():
        feats = model.image_features(images, sizes, modalities)
        out = model(
            torch.tensor(ids), attention_mask=mask, images=images, image_sizes=sizes, modalities=modalities
        )
    return feats, out.logits


def _theirs(hf, ids, feats, images, sizes, modalities=None, **extra):
    """transformers' logits for a batch of prompts ``ids`` (right-padded): every placeholder -> one <image>/<video>
    token per feature row of its visual; images (crops padded to the most) as pixel_values, videos as
    pixel_values_videos."""
    modalities = modalities or ["image"] * len(images)
    rows, visuals = [], iter(zip(feats, modalities))
    for prompt in ids:
        row = []
        for t in prompt:
            if t != IMAGE_TOKEN_INDEX:
                row.append(t)
                continue
            rows_of_visual, modality = next(visuals)
            token = hf.config.video_token_index if modality == "video" else hf.config.image_token_index
            row += [token] * len(rows_of_visual)
        rows.append(row)
    width = max(map(len, rows))
    pics = [x if x.ndim == 4 else x[None] for x, m in zip(images, modalities) if m == "image"]
    pixels = torch.zeros(len(pics), max(len(x) for x in pics), 3, 32, 32)
    for i, x in enumerate(pics):
        pixels[i, : len(x)] = x
    videos = [x for x, m in zip(images, modalities) if m == "video"]
    if videos:
        extra["pixel_values_videos"] = torch.stack(videos)
    hw = [[h, w] for (w, h), m in zip(sizes, modalities) if m == "image"]  # transformers: (height, width)
    with torch.no_grad():
        return hf(
            input_ids=torch.tensor([r + [0] * (width - len(r)) for r in rows]),
            attention_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            pixel_values=pixels,
            image_sizes=torch.tensor(hw),
            **extra,
        ).logits, [len(r) for r in rows]


def _diff(theirs, ours):
    assert theirs.shape[:2] == ours.shape[:2]
    return (theirs[..., : ours.shape[-1]] - ours).abs().max().item()


# ----------------------------------------------------------------------------------------- (a) LlavaNext
def _unpadded(size, cols, rows, rounding):
    """(rows, cols) of a tile map after unpadding, with the kept extent rounded by ``rounding``."""
    w, h = size
    if w / h > cols / rows:
        return rows - 2 * ((rows - rounding(h * (cols / w))) // 2), cols
    return rows, cols - 2 * ((cols - rounding(w * (rows / h))) // 2)


ROUNDING_DIFFERS = (188, 47)  # 3x1 tiles: int keeps 2 of the 4 feature rows, transformers all 4


def test_rounding_and_orientation(models, exported):
    """LLaVA-NeXT unpads with int(), transformers with int(round(x, 7)); the parity sizes agree under both.
    Where they do not (ROUNDING_DIFFERS), transformers builds more feature rows: a documented limit. And the
    (w, h) -> (h, w) swap matters: 48 x 24 given unswapped is tiled 1x2, not 2x1 (3 crops either way), and
    unpadded the other way, so transformers builds another number of rows."""
    from llava.images.grid import anyres_grid_shape

    for size in [*SIZES, ROUNDING_DIFFERS]:
        cols, rows = anyres_grid_shape(size, PINPOINTS, 32)
        theirs = _unpadded(size, cols * 4, rows * 4, lambda x: int(round(x, 7)))
        assert (_unpadded(size, cols * 4, rows * 4, int) == theirs) == (size != ROUNDING_DIFFERS), size
    model, (_, hf) = models["next_llama_clip"], exported["next_llama_clip"]
    args = ([_crops(ROUNDING_DIFFERS, 3)], [ROUNDING_DIFFERS])
    feats, _ = _ours(model, [PROMPT], *args)
    with pytest.raises(Exception, match="do not match"):
        _theirs(hf, [PROMPT], feats, *args)
    args = ([_crops((48, 24), 5)], [(48, 24)])
    feats, _ = _ours(model, [PROMPT], *args)
    with pytest.raises(Exception, match="do not match"):
        _theirs(hf, [PROMPT], feats, args[0], [(24, 48)])


@pytest.mark.parametrize(
    "name", ["next_llama_clip", "next_mistral_siglip", "ov_qwen2_siglip", "ov_llama_clip"]
)
def test_logit_parity_one_anyres_image(models, exported, name):
    """(a) LlavaNext, and OneVision with one image per sample (anyres_max_2 shrinks the 3- and 4-tile ones)."""
    model, (_, hf) = models[name], exported[name]
    extra = {} if name.startswith("next") else {"batch_num_images": torch.tensor([1])}
    for seed, size in enumerate(SIZES):
        args = ([_crops(size, seed)], [size])
        feats, ours = _ours(model, [PROMPT], *args)
        assert _diff(_theirs(hf, [PROMPT], feats, *args, **extra)[0], ours) < TOL, (name, size)
    if name == "ov_qwen2_siglip":  # the anyres_max_2 shrink is exercised: a 2x2-tile map keeps < 8 rows
        assert model.image_features([_crops((64, 64), 0)], [(64, 64)])[0].shape[0] < 16 + 8 * 9


def test_parity_checks_can_fail(models, exported):
    """The logits depend on what the parity tests compare: tile order, frame order, image_newline."""
    model, (_, hf) = models["ov_llama_clip"], exported["ov_llama_clip"]
    crops, frames, ids = (
        _crops((64, 40), 50),
        _pixels(3, 51),
        [1, IMAGE_TOKEN_INDEX, 13, IMAGE_TOKEN_INDEX, 29973],
    )
    rest = ([(64, 40), (32, 32)], ["image", "video"])
    feats, ours = _ours(model, [ids], [crops, frames], *rest)

    def diff(crops, frames):
        return _diff(
            _theirs(hf, [ids], feats, [crops, frames], *rest, batch_num_images=torch.tensor([1]))[0], ours
        )

    assert diff(crops, frames) < TOL
    assert diff(crops[[0, 2, 1, 3, 4]], frames) > 1e-3 and diff(crops, frames.flip(0)) > 1e-3
    newline = hf.model.image_newline.detach().clone()
    try:
        with torch.no_grad():
            hf.model.image_newline.mul_(-1)
        assert diff(crops, frames) > 1e-3
    finally:
        with torch.no_grad():
            hf.model.image_newline.copy_(newline)


def test_llava_next_processor_counts_our_features(models, exported):
    from PIL import Image
    from transformers import AutoProcessor

    model, (folder, _) = models["next_llama_clip"], exported["next_llama_clip"]
    processor = AutoProcessor.from_pretrained(folder)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    for size in SIZES:
        batch = processor(
            images=Image.new("RGB", size, (90, 140, 30)), text="USER: <image>\nWhat?", return_tensors="pt"
        )
        crops = _crops(size, 0)
        assert (
            int((batch["input_ids"] == image_id).sum()) == model.image_features([crops], [size])[0].shape[0]
        )
        assert tuple(batch["pixel_values"].shape[1:]) == tuple(crops.shape)
        assert batch["image_sizes"].tolist() == [[size[1], size[0]]]


def test_llava_next_export_layout(exported):
    folder, _ = exported["next_mistral_siglip"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llava_next" and cfg["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert cfg["image_grid_pinpoints"] == [[h, w] for w, h in PINPOINTS]
    assert cfg["vision_feature_select_strategy"] == "full" and cfg["vision_feature_layer"] == -2
    assert cfg["conv_template"] == "chatml_direct" and cfg["text_config"]["model_type"] == "mistral"
    assert not any(k.startswith(("mm_", "image_aspect")) for k in cfg["text_config"])
    clip = json.loads((exported["next_llama_clip"][0] / "config.json").read_text())
    assert clip["vision_feature_select_strategy"] == "default" and clip["image_token_index"] == 32000


# ----------------------------------------------------------------------------------------- (b) (c) OneVision
@pytest.mark.parametrize("name", ["ov_qwen2_siglip", "ov_llama_clip"])
def test_onevision_logit_parity_several_images_per_sample(models, exported, name):
    """(b) A batch: sample 0 holds one anyres image, sample 1 three images (each one crop + newline)."""
    model, (_, hf) = models[name], exported[name]
    images = [_crops((64, 40), 7), *[_pixels(1, 8 + i)[0] for i in range(3)]]
    sizes = [(64, 40), (48, 24), (20, 50), (30, 30)]
    img = IMAGE_TOKEN_INDEX
    ids = [[1, 3148, img, 13, 5618, 338, 29973], [1, img, img, 13, img, 338, 29973]]
    feats, ours = _ours(model, ids, images, sizes, mask=torch.ones(2, 7, dtype=torch.long))
    theirs, lengths = _theirs(hf, ids, feats, images, sizes, batch_num_images=torch.tensor([1, 3]))
    assert ours.shape[1] == max(lengths) and lengths[0] != lengths[1]
    for b, n in enumerate(lengths):
        assert (theirs[b, :n, : ours.shape[-1]] - ours[b, :n]).abs().max() < TOL, (name, b)


@pytest.mark.parametrize("name", ["ov_qwen2_siglip", "ov_llama_clip"])
def test_onevision_logit_parity_video_and_image(models, exported, name):
    """(c) One sample with an anyres image and a 3-frame video: bilinear pooling (stride 2), one newline at the end."""
    model, (_, hf) = models[name], exported[name]
    images, rest = [_crops((48, 24), 20), _pixels(3, 21)], ([(48, 24), (32, 32)], ["image", "video"])
    ids = [1, 3148, IMAGE_TOKEN_INDEX, 13, IMAGE_TOKEN_INDEX, 338, 29973]
    feats, ours = _ours(model, [ids], images, *rest)
    assert feats[1].shape[0] == 3 * math.ceil(4 / 2) ** 2 + 1
    theirs, _ = _theirs(hf, [ids], feats, images, *rest, batch_num_images=torch.tensor([1]))
    assert _diff(theirs, ours) < TOL, name


def test_onevision_export_layout_and_processor(exported):
    folder, _ = exported["ov_qwen2_siglip"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llava_onevision" and cfg["vision_aspect_ratio"] == "anyres_max_2"
    assert cfg["vision_feature_layer"] == -1 and cfg["vision_feature_select_strategy"] == "full"
    assert cfg["image_grid_pinpoints"] == [[h, w] for w, h in PINPOINTS]
    assert (cfg["image_token_index"], cfg["video_token_index"]) == (32000, 32001)
    plain = json.loads((exported["ov_llama_clip"][0] / "config.json").read_text())
    assert plain["vision_aspect_ratio"] == "anyres_max_4"  # plain anyres: never shrinks (4 tiles at most)
    proc = json.loads((folder / "processor_config.json").read_text())
    assert proc["processor_class"] == "LlavaOnevisionProcessor" and proc["num_image_tokens"] == 16
    assert proc["video_processor"]["size"] == {"height": 32, "width": 32}
    image_processor = LlavaOnevisionImageProcessorPil.from_pretrained(folder)
    assert [list(p) for p in image_processor.image_grid_pinpoints] == [[h, w] for w, h in PINPOINTS]
    assert AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(["<image>", "<video>"]) == [
        32000,
        32001,
    ]
    assert (folder / "chat_template.jinja").read_text() == "{{ messages }}"


def test_onevision_processor_with_torchvision(models, exported):
    """Where torchvision is installed, transformers' own processor reads the folder and counts our rows."""
    pytest.importorskip("torchvision")
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(exported["ov_qwen2_siglip"][0])
    batch = processor(images=[Image.new("RGB", (64, 40))], text="<image>", return_tensors="pt")
    feats = models["ov_qwen2_siglip"].image_features([_crops((64, 40), 0)], [(64, 40)])
    assert int((batch["input_ids"] == 32000).sum()) == feats[0].shape[0]


# ----------------------------------------------------------------------------------------- (d) round trip
@pytest.mark.parametrize("name", ["next_mistral_siglip", "ov_qwen2_siglip", "ov_llama_clip"])
def test_import_back_gives_identical_logits(models, exported, name, tmp_path):
    model, (folder, _) = models[name], exported[name]
    video = name.startswith("ov")
    ids = PROMPT + ([IMAGE_TOKEN_INDEX, 29973] if video else [])
    crops = _crops((33, 71), 30)
    args = (
        ([crops, _pixels(2, 31)], [(33, 71), (32, 32)], ["image", "video"])
        if video
        else ([crops], [(33, 71)])
    )
    _, ref = _ours(model, [ids], *args)
    back, tok = llava_from_hf_next(folder)
    assert type(back) is type(model) and tok.convert_tokens_to_ids("<image>") == 32000
    for k in ("image_aspect_ratio", "image_grid_pinpoints", "mm_patch_merge_type", "conv_template"):
        if k != "image_aspect_ratio" or name != "ov_llama_clip":  # plain anyres comes back as anyres_max_4
            assert getattr(back.config, k) == getattr(model.config, k), k
    assert _diff(_ours(back, [ids], *args)[1], ref) < TOL
    import_from_hf_next(folder, tmp_path / "orig")
    saved = json.loads((tmp_path / "orig" / "config.json").read_text())
    assert saved["mm_vision_tower"] == str((tmp_path / "orig" / "vision_tower").resolve())
    reloaded = type(model).from_pretrained(tmp_path / "orig").eval()
    assert _diff(_ours(reloaded, [ids], *args)[1], ref) < TOL
    # the builder loads the llava-hf folder as it is, and the in-memory import saves and reloads (its
    # mm_vision_tower is the llava-hf folder, which the tower loader reads as a tower)
    from llava.model.builder import load_pretrained_model

    _, served, _, _ = load_pretrained_model(str(folder), None, "m", device="cpu", device_map="cpu")
    assert _diff(_ours(served.float().eval(), [ids], *args)[1], ref) < TOL
    back.save_pretrained(tmp_path / "saved", state_dict={
        k: v for k, v in back.state_dict().items() if ".vision_tower." not in k})  # fmt: skip
    again = type(model).from_pretrained(tmp_path / "saved").eval()
    assert _diff(_ours(again, [ids], *args)[1], ref) < TOL


# ----------------------------------------------------------------------------------------- choice and refusals
def test_format_choice_and_refusals(models, tiny_kit, tmp_path):
    assert hf_format_for(models["next_llama_clip"].config) == "llava_next"
    assert hf_format_for(models["ov_qwen2_siglip"].config) == "llava_onevision"
    flat = build_tiny_llava(tiny_kit)
    assert hf_format_for(flat.config) == "llava"
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer)
    with pytest.raises(ValueError, match="spatial_unpad"):
        export_to_llava_next(flat, tok, tmp_path / "a")
    with pytest.raises(ValueError, match="llava_onevision"):  # anyres_max_2 shrinks; LlavaNext cannot
        export_to_llava_next(models["ov_qwen2_siglip"], tok, tmp_path / "b")
    grid = models["ov_llama_clip"]
    grid.config.mm_newline_position = "grid"
    try:
        with pytest.raises(ValueError, match="mm_newline_position"):
            export_to_onevision(grid, tok, tmp_path / "c")
        assert export_to_onevision(grid, tok, tmp_path / "d", any_video=True).is_dir()  # image-only model
    finally:
        grid.config.mm_newline_position = "one_token"


# ----------------------------------------------------------------------------------------- command line
def test_convert_cli_picks_the_format_and_reads_it_back(models, tiny_kit, tmp_path):
    from llava.model.builder import load_pretrained_model
    from llava.model.convert_hf import main as convert_main

    model, orig = models["next_llama_clip"], tmp_path / "orig"
    model.save_pretrained(orig)
    AutoTokenizer.from_pretrained(tiny_kit.tokenizer).save_pretrained(orig)

    def cli(direction, src, out, *more):
        convert_main([direction, "--model-path", str(src), "--output", str(tmp_path / out), *more])
        return tmp_path / out

    next_dir = cli("--to-hf", orig, "next", "--dtype", "float32")
    assert json.loads((next_dir / "config.json").read_text())["model_type"] == "llava_next"
    ov = cli("--to-hf", orig, "ov", "--hf-format", "llava_onevision")
    assert json.loads((ov / "config.json").read_text())["model_type"] == "llava_onevision"
    _, back, _, _ = load_pretrained_model(str(cli("--from-hf", ov, "back")), None, "x", device="cpu")
    args = ([_crops((90, 30), 40), _pixels(2, 41)], [(90, 30), (32, 32)], ["image", "video"])
    ids = [PROMPT + [IMAGE_TOKEN_INDEX]]
    assert _diff(_ours(back, ids, *args)[1], _ours(model, ids, *args)[1]) < TOL
    with pytest.raises(SystemExit):  # --hf-format is for --to-hf
        cli("--from-hf", ov, "x", "--hf-format", "llava")
    with pytest.raises(ValueError, match="is not a llava-hf folder"):
        cli("--from-hf", orig, "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
