"""A sample's visuals -> pixel tensors, the way the model takes them (the data flow's pixels arrow).

- one image: by the format's `image_aspect_ratio`: square / pad -> [3, H, W] through the fast
  transform (llava.images.transform; 8-bit levels with `uint8_images`), anyres / anyres_max_N ->
  [1 + tiles, 3, H, W] (llava.images.process);
- several images: each padded to a square at base resolution -> [3, H, W] (LLaVA-NeXT / OneVision);
- a video: its frames taken by `SampleFormat.frame_indices`, decoded with PyAV
  (llava.images.video), each resized and cropped as a square image -> [F, 3, H, W];
- a text-only sample of a multimodal model: one zero stand-in image (its features are dropped).

Every failure is a VisualError naming the file; the dataset adds the sample.
"""

from __future__ import annotations

import torch

from llava.data.sample_format import SampleFormat
from llava.data.visuals import IMAGE, VIDEO, Visual, VisualError, VisualInfo
from llava.images.transform import ImageTransform


def open_rgb(visual: Visual):
    """The image, decoded, in RGB (from its file, or its bytes embedded in the data); VisualError when
    missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    where = visual.path or f"{visual.name} (embedded)"
    try:
        with Image.open(visual.opened()) as im:
            im.load()
            return im if im.mode == "RGB" else im.convert("RGB")
    except FileNotFoundError as e:
        raise VisualError(f"image file {where} not found (check --image_folder)") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise VisualError(f"image file {where} cannot be read ({type(e).__name__}: {e})") from e


class VisualLoader:
    """Pixels of a sample's visuals for `fmt` (see the module docstring). Transforms are built on
    first use, so a loader pickled into DataLoader workers carries only the format."""

    def __init__(self, fmt: SampleFormat):
        if fmt.image_processor is None:
            raise ValueError("the SampleFormat has no image_processor: the model has no vision tower")
        self.fmt = fmt
        self._transforms: dict[str | None, ImageTransform | None] = {}

    def transform(self, mode: str | None) -> ImageTransform | None:
        """The fast transform for `mode` (None where only the processor can do it: anyres)."""
        if mode not in self._transforms:
            self._transforms[mode] = ImageTransform.from_processor(self.fmt.image_processor, mode)
        return self._transforms[mode]

    @property
    def uint8(self) -> bool:
        """Whether this loader gives 8-bit levels (the tower normalises on its device): only when
        every visual it can give goes through a fast transform, so a batch never mixes dtypes."""
        return bool(self.fmt.uint8_images) and self.transform(self.fmt.image_aspect_ratio) is not None

    def _pixels(self, image, mode: str | None) -> torch.Tensor:
        transform = self.transform(mode)
        if transform is None:
            from llava.images.process import process_images

            return process_images([image], self.fmt.image_processor, _Mode(mode, self.fmt))[0].float()
        out = transform.levels(image) if self.uint8 else transform(image)
        return out if self.uint8 else out.float()

    def load(self, visuals: list[Visual]) -> tuple[list[torch.Tensor], list[tuple[int, int]], list[str]]:
        """(pixels per visual, original (w, h) per visual, modality per visual)."""
        if visuals and visuals[0].kind == VIDEO:
            frames, size = self.video(visuals[0])
            return [frames], [size], [VIDEO]
        mode = self.fmt.image_mode(len(visuals))
        pixels, sizes = [], []
        for v in visuals:
            image = open_rgb(v)
            pixels.append(self._pixels(image, mode))
            sizes.append(image.size)
        return pixels, sizes, [IMAGE] * len(visuals)

    def video(self, visual: Visual, info: VisualInfo | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """[F, 3, H, W] frames of a video (a file or a frames folder) and its frame size (w, h)."""
        from llava.data.visuals import local_video, probe
        from llava.images.video import VideoError, load_video_frames

        info = info or probe(visual)
        indices = self.fmt.frame_indices(info)
        try:
            with local_video(visual) as path:
                frames = load_video_frames(path, indices)
        except VideoError as e:
            raise VisualError(str(e)) from e
        if len(frames) != len(indices):
            raise VisualError(f"video {visual.name}: {len(frames)} frames decoded, {len(indices)} expected")
        return torch.stack([self._pixels(f, "square") for f in frames]), tuple(frames[0].size)

    def stand_in(self) -> tuple[torch.Tensor, tuple[int, int]]:
        """The zero image of a text-only sample, in the dtype the real visuals have."""
        processor = self.fmt.image_processor
        crop = getattr(processor, "crop_size", None) or processor.size
        h, w = (crop["height"], crop["width"]) if "height" in crop else (crop["shortest_edge"],) * 2
        return torch.zeros(3, h, w, dtype=torch.uint8 if self.uint8 else torch.float32), (w, h)


class _Mode:
    """The settings `process_images` reads, with the aspect ratio of this visual."""

    def __init__(self, mode: str | None, fmt: SampleFormat):
        self.image_aspect_ratio = mode
        self.image_grid_pinpoints = fmt.image_grid_pinpoints
