"""What `python -m llava.data.validate` reads: every --data_path form training reads."""

from __future__ import annotations

import os

from llava.data.sources import Embedded, open_source


def read_samples(data_path) -> list[dict]:
    """The samples of any --data_path form training reads (llava.data.sources: JSON / JSONL, parquet or
    arrow shards, a save_to_disk folder, a YAML mixture). A mixture entry's own image / video folder is
    joined into its names, so --image_folder / --video_folder apply to the rest."""
    source = open_source(data_path)
    samples = []
    for i, sample in enumerate(source):
        images, videos = source.image_folder(i), source.video_folder(i)
        if images and isinstance(sample.get("image"), (str, list)):
            names = sample["image"] if isinstance(sample["image"], list) else [sample["image"]]
            joined = [os.path.join(images, n) if isinstance(n, str) else n for n in names]
            sample = dict(sample, image=joined if isinstance(sample["image"], list) else joined[0])
        if (videos or images) and isinstance(sample.get("video"), str):
            sample = dict(sample, video=os.path.join(videos or images, sample["video"]))
        samples.append(sample)
    return samples


def embeds(sample: dict) -> bool:
    values = [
        sample.get("video"),
        *(sample["image"] if isinstance(sample.get("image"), list) else [sample.get("image")]),
    ]
    return any(isinstance(v, Embedded) for v in values)
