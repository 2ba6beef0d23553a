"""Convert LLaVA training data to parquet shards with the images inside, and back to JSON + a folder.

    python -m llava.data.convert --data_path llava_v1_5_mix665k.json --image_folder ./playground/data \\
        --output_dir ./playground/data/mix665k_parquet [--max_shard_size 500MB] [--video_folder V] [--embed_videos]
    python -m llava.data.convert --data_path ./playground/data/mix665k_parquet --to_json mix665k.json \\
        --image_folder ./images [--video_folder ./videos]

To parquet: `--data_path` is any form training reads (JSON/JSONL, a YAML mixture with its per-entry
folders, parquet...). The shards (`train-00000.parquet`, ...) hold one row per sample in the layout
llava.data.sources reads (LLaVA-OneVision-Data's): `id` (string), `conversations`, `image` as
`datasets.Image()` structs {bytes, path: the name in the JSON} (a list of them, `List(Image())`, when
any sample has several images: then every image sample's `image` is a list, a single image a list of
one), `video` as the name (a string) or, with --embed_videos, a {bytes, path} struct, and every other
field as its own column. The `datasets` features are in each file's schema, so plain
`datasets.load_dataset("parquet", data_files=...)` shows Image columns. A shard ends before the sample
that would take it past --max_shard_size (image and video bytes plus text); each is written under a
temporary name and renamed. `convert_manifest.json` lists the finished shards and the samples of each
and is rewritten (atomically) after every shard: a rerun after a crash skips them and goes on, and a
changed input (size or modification time) or changed options is refused. A sample's missing image
stops the conversion with its id (run python -m llava.data.validate first).

Back to JSON (`--to_json`): embedded images (and videos) are written under --image_folder (videos:
--video_folder, else the image folder) by their stored path, or `<id>_<k>.<ext>` when there is none
(or it is absolute or leaves the folder); a file already there must hold the same bytes. Names are
kept as they are. The JSON is written atomically. Ids become strings in parquet; null fields are left
out when read back.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llava.data.sources import Embedded, SampleSource, open_source
from llava.utils.atomic import atomic_path, atomic_write_bytes
from llava.utils.jsonfiles import read_json, write_json

logger = logging.getLogger(__name__)

MANIFEST = "convert_manifest.json"
MANIFEST_FORMAT = 1
SHARD_NAME = "train-{:05d}.parquet"
ROW_GROUP = 100  # rows per parquet row group (what `datasets` uses for image data)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


class ConvertError(ValueError):
    """A conversion that cannot go on: names the sample, file or folder and what to do."""


def parse_size(text) -> int:
    """Bytes in `500MB`, `1.5GB`, `512MiB` or a plain number of bytes (MB = 10**6, MiB = 2**20)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise ConvertError(f"--max_shard_size {text!r}: give a size such as 500MB, 2GB or 512MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


# ------------------------------------------------------------------------------------------ layout
@dataclass
class Layout:
    """The shards' columns: `features` (datasets.Features), the `image` column's kind (None, 'single',
    'list') and the `video` column's (None, 'name', 'embedded')."""

    features: object
    image: str | None
    video: str | None

    @property
    def schema(self):
        return self.features.arrow_schema


def plan_layout(source: SampleSource, embed_videos: bool = False, progress: bool = True) -> Layout:
    """Read every sample once for the columns and their types (one type per column for all shards)."""
    import datasets
    import pyarrow as pa
    from tqdm import tqdm

    keys: dict[str, None] = {}
    texts: list[dict] = []
    single = several = video_bytes = False
    for sample in tqdm(
        source, desc="reading samples", total=len(source), disable=not progress, mininterval=5
    ):
        keys.update(dict.fromkeys(sample))
        texts.append({k: v for k, v in sample.items() if k not in ("image", "video")})
        image, video = sample.get("image"), sample.get("video")
        several |= isinstance(image, list)
        single |= image is not None and not isinstance(image, list)
        video_bytes |= isinstance(video, Embedded)
    if "conversations" not in keys:
        raise ConvertError(f"{source.name}: no sample has 'conversations'; is this LLaVA training data?")
    columns = ["id", "conversations", "image", "video"]
    columns = [c for c in columns if c in keys] + [k for k in keys if k not in columns]
    fields = {}
    for col in columns:
        if col == "image":
            fields[col] = datasets.List(datasets.Image()) if several else datasets.Image()
        elif col == "video":
            embedded = embed_videos or video_bytes
            fields[col] = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")} if embedded else datasets.Value("string")  # fmt: skip
        elif col == "id":
            fields[col] = datasets.Value("string")
        else:
            try:
                kind = pa.array([t.get(col) for t in texts]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise ConvertError(
                    f"{source.name}: field {col!r} holds values of different types ({e}); a parquet column "
                    "has one type: make them one type (or drop the field) first"
                ) from None
            fields[col] = datasets.Features.from_arrow_schema(pa.schema([(col, kind)]))[col]
    video_kind = ("embedded" if embed_videos or video_bytes else "name") if "video" in keys else None
    image_kind = ("list" if several else "single") if "image" in keys and (single or several) else None
    if "image" in keys and image_kind is None:  # only nulls
        del fields["image"]
    return Layout(datasets.Features(fields), image_kind, video_kind)


def _read(name: str, folder: str | None, what: str, where: str, flag: str) -> dict:
    path = os.path.join(folder or "", name)
    if os.path.isdir(path):
        raise ConvertError(
            f"{where}: {what} {path} is a folder of frames; --embed_videos embeds video files only "
            "(convert without it: the video column then keeps names)"
        )
    try:
        return {"bytes": Path(path).read_bytes(), "path": name}
    except FileNotFoundError:
        raise ConvertError(f"{where}: {what} file {path} not found (check {flag})") from None
    except OSError as e:
        raise ConvertError(f"{where}: {what} file {path} cannot be read ({e})") from None


def _embed(value, folder, what, where, flag) -> dict:
    if isinstance(value, Embedded):
        return {"bytes": value.data, "path": value.name}
    return _read(value, folder, what, where, flag)


def sample_to_row(sample: dict, layout: Layout, image_folder: str | None, video_folder: str | None,
                  where: str) -> tuple[dict, int]:  # fmt: skip
    """(the shard row of `sample`, its size in bytes as the shard limit counts it)."""
    row, size = {}, 0
    for col in layout.features:
        value = sample.get(col)
        if value is None:
            row[col] = None
        elif col == "image":
            images = value if isinstance(value, list) else [value]
            structs = [_embed(v, image_folder, "image", where, "--image_folder") for v in images]
            size += sum(len(s["bytes"]) for s in structs)
            row[col] = structs if layout.image == "list" else structs[0]
        elif col == "video" and layout.video == "embedded":
            row[col] = _embed(value, video_folder or image_folder, "video", where, "--video_folder")
            size += len(row[col]["bytes"])
        elif col == "id":
            row[col] = str(value)
        else:
            row[col] = value
    text = {k: v for k, v in row.items() if k not in ("image", "video") or isinstance(v, str)}
    return row, size + len(json.dumps(text, default=str))


# ------------------------------------------------------------------------------------------ to parquet
def _write_shard(
    tmp: Path, source: SampleSource, start: int, layout: Layout, limit: int, folders, bar
) -> int:
    """Write samples start.. to `tmp` until the next would pass `limit`; the end index (exclusive)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, group, size, i = layout.schema, [], 0, start
    with pq.ParquetWriter(tmp, schema) as writer:
        while i < len(source):
            image_folder, video_folder = folders(i)
            sample = source[i]
            where = f"sample {sample.get('id', '?')!r} (index {i}, {source.describe(i)})"
            row, nbytes = sample_to_row(sample, layout, image_folder, video_folder, where)
            if i > start and size + nbytes > limit:
                break
            group.append(row)
            size, i = size + nbytes, i + 1
            bar.update(1)
            if len(group) == ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                group = []
        if group:
            writer.write_table(pa.Table.from_pylist(group, schema=schema))
    return i


def _resumable_shards(
    out: Path, manifest: dict | None, identity: dict, options: dict, layout: Layout
) -> list[dict]:
    """The finished shards of an earlier run of the same conversion (refusing another one's)."""
    if manifest is None:
        found = sorted(p.name for p in out.glob("*.parquet")) if out.is_dir() else []
        if found:
            raise ConvertError(
                f"--output_dir {out} already holds {found[0]}{' and more' if len(found) > 1 else ''} but no "
                f"{MANIFEST}: not a conversion this tool can resume; choose an empty or new folder"
            )
        return []
    changed = []
    if manifest.get("input", {}).get("fingerprint") != identity["fingerprint"]:
        changed.append(f"the input {identity['data_path']} changed (its size or modification time differ)")
    for key, value in options.items():
        if manifest.get("options", {}).get(key) != value:
            changed.append(f"{key} was {manifest.get('options', {}).get(key)!r}, now {value!r}")
    if not changed and manifest.get("features") != layout.features.to_dict():
        changed.append("the samples' columns or types differ")
    if changed:
        raise ConvertError(
            f"--output_dir {out} holds a conversion of other data or with other options: {'; '.join(changed)}. "
            f"Delete {out} to start over, or choose another --output_dir"
        )
    shards = []
    for shard in manifest.get("shards", []):
        path = out / shard["file"]
        expected_start = shards[-1]["end"] if shards else 0
        if not path.is_file() or path.stat().st_size != shard["bytes"] or shard["start"] != expected_start:
            logger.warning("%s is missing or changed: converting again from sample %d", path, expected_start)
            break
        shards.append(shard)
    return shards


def convert_to_parquet(data_path, output_dir, image_folder=None, video_folder=None, max_shard_size="500MB",
                       embed_videos: bool = False, *, seed: int = 0, cache_dir=None,
                       progress: bool = True) -> list[Path]:  # fmt: skip
    """Write `data_path`'s samples to parquet shards in `output_dir` (resuming an interrupted run);
    the shard paths, in order."""
    from tqdm import tqdm

    limit = parse_size(max_shard_size)
    source = open_source(data_path, seed=seed, cache_dir=cache_dir)
    if not len(source):
        raise ConvertError(f"{source.name} holds no samples")
    out = Path(output_dir)
    manifest_path = out / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.is_file() else None
    if manifest is not None and manifest.get("format") != MANIFEST_FORMAT:
        raise ConvertError(f"{manifest_path} is of another format; delete {out} to start over")
    identity = {"data_path": str(data_path), "fingerprint": source.fingerprint, "samples": len(source)}
    options = {
        "image_folder": os.path.abspath(image_folder) if image_folder else None,
        "video_folder": os.path.abspath(video_folder) if video_folder else None,
        "max_shard_size": limit,
        "embed_videos": bool(embed_videos),
        "seed": seed,
    }
    layout = plan_layout(source, embed_videos, progress)
    shards = _resumable_shards(out, manifest, identity, options, layout)
    n = len(source)
    start = shards[-1]["end"] if shards else 0
    if start == n:
        print(f"{out}: all {n} samples already converted ({len(shards)} shards)")
        return [out / s["file"] for s in shards]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".train-*.tmp"):  # a killed run's unfinished shard
        stale.unlink()

    def folders(i):
        return source.image_folder(i) or image_folder, source.video_folder(i) or video_folder

    bar = tqdm(total=n, initial=start, desc=f"converting to {out}", unit="sample", disable=not progress)
    with bar:
        while start < n:
            name = SHARD_NAME.format(len(shards))
            with atomic_path(out / name, suffix=".tmp") as tmp:
                end = _write_shard(tmp, source, start, layout, limit, folders, bar)
            shards.append({"file": name, "start": start, "end": end, "bytes": (out / name).stat().st_size})
            manifest = {"format": MANIFEST_FORMAT, "input": identity, "options": options,
                        "features": layout.features.to_dict(), "shards": shards, "complete": end == n}  # fmt: skip
            write_json(manifest_path, manifest, indent=1)
            start = end
    print(f"wrote {n} samples to {len(shards)} shards in {out}")
    return [out / s["file"] for s in shards]


# ------------------------------------------------------------------------------------------ to JSON
_IMAGE_EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def _extension(data: bytes, kind: str) -> str:
    if kind == "video":
        if data[4:8] == b"ftyp":
            return ".mp4"
        if data[:4] == b"\x1aE\xdf\xa3":
            return ".mkv"
        if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
            return ".avi"
        return ".mp4"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _IMAGE_EXT.get(im.format, f".{(im.format or 'img').lower()}")
    except (UnidentifiedImageError, OSError):
        return ".img"


def _safe_name(name: str | None) -> str | None:
    """`name` as a relative path inside the folder, or None when it is absolute or leaves it."""
    if not name:
        return None
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name):
        return None
    return str(p)


class _Unpacker:
    """Writes embedded visuals as files, once each; a name already taken by other bytes is an error."""

    def __init__(self):
        self.written: dict[Path, bytes] = {}

    def __call__(self, value, folder: str, kind: str, sample_id, k: int | None, where: str) -> str:
        if not isinstance(value, Embedded):
            return value
        name = _safe_name(value.name)
        if name is None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(sample_id)).strip("._") or "sample"
            name = f"{slug}{'' if k is None else f'_{k}'}{_extension(value.data, kind)}"
        target = Path(folder) / name
        known = self.written.get(target)
        if known is None and target.is_file():
            known = target.read_bytes()
        if known is None:
            atomic_write_bytes(target, value.data)
        elif known != value.data:
            raise ConvertError(
                f"{where}: {target} already exists with other bytes than this sample's {kind}; "
                "write to an empty folder"
            )
        self.written[target] = value.data
        return name


def convert_to_json(data_path, output_json, image_folder, video_folder=None, *, seed: int = 0, cache_dir=None,
                    progress: bool = True) -> Path:  # fmt: skip
    """Write `data_path`'s samples as a JSON list with file names, their embedded images and videos as
    files under `image_folder` / `video_folder` (default: the image folder)."""
    from tqdm import tqdm

    source = open_source(data_path, seed=seed, cache_dir=cache_dir)
    unpack, samples = _Unpacker(), []
    for i in tqdm(range(len(source)), desc=f"writing {output_json}", unit="sample", disable=not progress):
        sample = dict(source[i])
        sid = sample.get("id", i)
        where = f"sample {sid!r} (index {i}, {source.describe(i)})"
        image = sample.get("image")
        if isinstance(image, list):
            sample["image"] = [unpack(v, image_folder, "image", sid, k, where) for k, v in enumerate(image)]
        elif image is not None:
            sample["image"] = unpack(image, image_folder, "image", sid, None, where)
        if sample.get("video") is not None:
            sample["video"] = unpack(sample["video"], video_folder or image_folder, "video", sid, None, where)
        samples.append(sample)
    write_json(output_json, samples, ensure_ascii=False)
    print(f"wrote {len(samples)} samples to {output_json} ({len(unpack.written)} files under {image_folder})")
    return Path(output_json)


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add(
        "--data_path",
        required=True,
        help="what to convert: any --data_path form (JSON/JSONL, YAML, parquet...)",
    )
    add("--image_folder", default=None,
        help="to parquet: where the 'image' names are; --to_json: where embedded images are written")  # fmt: skip
    add("--video_folder", default=None, help="as --image_folder, for videos (default: the image folder)")
    add("--output_dir", default=None, help="write parquet shards here (resumes an interrupted run)")
    add("--max_shard_size", default="500MB", help="shard size limit (default 500MB; also GB, MiB, ...)")
    add("--embed_videos", action="store_true", help="store video files' bytes in the shards (default: names)")
    add("--to_json", default=None, metavar="OUT.json", help="convert back: write a JSON list + files")
    add("--seed", type=int, default=0, help="a YAML mixture's random: sampling seed (as training's --seed)")
    add("--cache_dir", default=None, help="datasets' cache for reading parquet input (default: its own)")
    args = p.parse_args(argv)
    if bool(args.output_dir) == bool(args.to_json):
        p.error("pass --output_dir (to parquet) or --to_json (back to JSON + files), one of them")
    if args.to_json and not args.image_folder:
        p.error("--to_json needs --image_folder: where the embedded images are written")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.to_json:
            convert_to_json(args.data_path, args.to_json, args.image_folder, args.video_folder,
                            seed=args.seed, cache_dir=args.cache_dir)  # fmt: skip
        else:
            convert_to_parquet(args.data_path, args.output_dir, args.image_folder, args.video_folder,
                               args.max_shard_size, args.embed_videos, seed=args.seed,
                               cache_dir=args.cache_dir)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
