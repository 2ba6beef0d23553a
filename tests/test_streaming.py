"""--streaming True: shards read piece by piece in a seeded stream order (llava.data.streaming).

The order is a permutation of every row each epoch, the same for the same seed in a new process
and different across epochs and seeds; a process holds one window's pieces at a time; the samples
equal those of the memory-mapped table source; the batches do not depend on the number of
DataLoader workers; ranks split the order; a killed streaming run resumes to the uninterrupted run's
losses, and --packing works with it."""

import io
import json

import pytest
import torch
from PIL import Image
from test_train import run, stage2_args, train_kit  # noqa: F401
from test_train_resume import _kill_then_resume

import llava.data.tools.convert as convert
from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.sample_format import SampleFormat
from llava.data.sources import open_source
from llava.data.streaming import StreamingSource, StreamSampler, shard_files
from llava.data.streaming_dataset import StreamingSupervisedDataset
from llava.train.arguments import DataArguments

N = 40


def _png(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20 + k % 7, 30), (6 * k % 256, 90, 200 - k)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, monkeypatch_module):
    """40 samples (text-only, one image, two images) as parquet shards of 4-row row groups."""
    root = tmp_path_factory.mktemp("stream")
    (root / "images").mkdir()
    samples = []
    for i in range(N):
        turns = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi " * (1 + i % 6)}]
        sample = {"id": f"s{i}", "conversations": turns}
        if i % 3:
            names = [f"p{i}.png"] + ([f"q{i}.png"] if i % 3 == 2 else [])
            for k, name in enumerate(names):
                (root / "images" / name).write_bytes(_png(i + 50 * k))
            sample["image"] = names if len(names) > 1 else names[0]
            turns[0]["value"] = "<image>\n" * len(names) + "What is it?"
        samples.append(sample)
    (root / "data.json").write_text(json.dumps(samples))
    monkeypatch_module.setattr(convert, "ROW_GROUP", 4)
    files = convert.convert_to_parquet(
        root / "data.json",
        root / "parquet",
        image_folder=root / "images",
        max_shard_size="4KB",
        progress=False,
    )
    assert len(files) >= 3
    return root / "parquet"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _ids(source, epoch):
    return [source[epoch * len(source) + k]["id"] for k in range(len(source))]


def test_the_order_is_a_seeded_permutation_per_epoch(shards):
    source = StreamingSource(shards, seed=3, window_rows=8)
    assert len(source) == N and len(source.pieces) >= N // 4
    epochs = [_ids(source, e) for e in range(3)]
    for ids in epochs:
        assert sorted(ids) == sorted(f"s{i}" for i in range(N))
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != [f"s{i}" for i in range(N)]  # shuffled, not file order
    again = StreamingSource(shards, seed=3, window_rows=8)
    assert [_ids(again, e) for e in (2, 0)] == [epochs[2], epochs[0]]  # any epoch, in any order
    assert _ids(StreamingSource(shards, seed=4, window_rows=8), 0) != epochs[0]
    assert source[5] == source[5 + 0 * N]  # a plain index is epoch 0's


def test_a_process_holds_one_window_of_pieces(shards):
    source = StreamingSource(shards, seed=0, window_rows=8)
    held = []
    for k in range(N):
        source[N + k]
        held.append(sum(t.num_rows for t in source._window["tables"].values()))
    # a window is >= 8 rows of 4-row pieces: at most 8 + 3 rows; never the whole data
    assert max(held) <= 11 and max(held) < N


def test_samples_equal_the_table_sources(shards):
    table = open_source(shards)
    by_id = {s["id"]: s for s in table}
    stream = StreamingSource(shards, seed=1, window_rows=8)
    for k in range(N):
        sample = stream[k]
        assert sample == by_id[sample["id"]], sample["id"]
    assert "row group" in stream.describe(0) and ".parquet" in stream.describe(0)


@pytest.fixture(scope="module")
def fmt(kit_processor):
    return SampleFormat("v1", 256, is_multimodal=True, image_aspect_ratio="pad", num_image_tokens=16,
                        image_processor=kit_processor, crop_size=32)  # fmt: skip


def _dataset(shards, tok, fmt, **kw):
    args = DataArguments(data_path=str(shards), streaming=True, **kw)
    ds = StreamingSupervisedDataset(str(shards), tok, args, fmt, seed=0, window_rows=8)
    ds.prepare()
    return ds


def _epoch_batches(ds, tok, fmt, workers, epoch=1):
    sampler = StreamSampler(len(ds))
    sampler.set_epoch(epoch)
    collate = DataCollatorForSupervisedDataset(tokenizer=tok, sample_format=fmt)
    loader = torch.utils.data.DataLoader(
        ds, sampler=sampler, batch_size=4, num_workers=workers, collate_fn=collate
    )
    return list(loader)


def test_batches_do_not_depend_on_the_number_of_workers(shards, kit_tokenizer, fmt):
    ds = _dataset(shards, kit_tokenizer, fmt)
    one, two = _epoch_batches(ds, kit_tokenizer, fmt, 0), _epoch_batches(ds, kit_tokenizer, fmt, 2)
    assert len(one) == len(two) == N // 4
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["images"], b["images"])
    with pytest.raises(TypeError, match="--streaming: per-sample lengths"):
        _ = ds.modality_lengths


def test_ranks_split_the_stream_order():
    from accelerate.data_loader import BatchSamplerShard

    sampler = StreamSampler(N)
    sampler.set_epoch(2)
    batches = torch.utils.data.BatchSampler(sampler, batch_size=4, drop_last=False)
    ranks = [list(BatchSamplerShard(batches, num_processes=2, process_index=r)) for r in range(2)]
    seen = [i for rank in ranks for batch in rank for i in batch]
    assert sorted(seen) == list(range(2 * N, 3 * N))
    assert ranks[0][0] == [2 * N + k for k in range(4)] and ranks[1][0] == [2 * N + 4 + k for k in range(4)]


def test_a_bad_row_names_its_shard_and_is_replaced_with_skip(shards, kit_tokenizer, fmt, tmp_path):
    import pyarrow.parquet as pq

    first = shard_files(str(shards))[0]
    table = pq.read_table(first)
    rows = table.to_pylist()
    bad = next(k for k, r in enumerate(rows) if r["image"])
    rows[bad]["image"] = [{"bytes": b"not a picture", "path": "broken.png"}]
    out = tmp_path / "bad"
    out.mkdir()
    for f in shard_files(str(shards)):
        t = pq.read_table(f)
        if f == first:
            import pyarrow as pa

            t = pa.Table.from_pylist(rows, schema=t.schema)
        pq.write_table(t, out / f.split("/")[-1], row_group_size=4)
    ds = _dataset(out, kit_tokenizer, fmt)
    position = next(k for k in range(N) if ds.list_data_dict[k]["id"] == rows[bad]["id"])
    with pytest.raises(
        ValueError, match=rf"{rows[bad]['id']}.*row \d+, row group \d+ of .*{first.split('/')[-1]}"
    ):
        ds[position]
    ds = _dataset(out, kit_tokenizer, fmt, skip_bad_samples=True)
    item = ds[position]
    assert set(item["modalities"]) == {"image"} and ds.skipped == 1  # the next sample with images


def test_streaming_needs_shards(tmp_path):
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(
        ValueError, match="--streaming True reads .parquet or .arrow shards.*llava.data.convert"
    ):
        shard_files(str(tmp_path / "data.json"))
    with pytest.raises(ValueError, match="holds none"):
        shard_files(str(tmp_path))


# ------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


@pytest.fixture(scope="module")
def kit_shards(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("kit-parquet")
    convert.convert_to_parquet(
        kit.finetune, out, image_folder=kit.images, max_shard_size="6KB", progress=False
    )
    return out


def _streaming_args(kit, shards, out, extra):
    args = stage2_args(kit, out, None, f"--streaming True --streaming_window_rows 8 {extra}")
    args[args.index("--data_path") + 1] = str(shards)
    return args


@pytest.mark.slow
def test_a_killed_streaming_run_resumes_to_the_same_losses(kit, kit_shards, tmp_path):
    # 20 samples / batch 4 = 5 steps per epoch, 2 epochs; checkpoint at 7 (mid epoch 2), killed at 8
    extra = "--num_train_epochs 2 --save_steps 7"
    ref, _ = _kill_then_resume(tmp_path, lambda out: _streaming_args(kit, kit_shards, out, extra), 8, 7)
    losses = [h["loss"] for h in ref.state.log_history if "loss" in h]
    assert len(losses) == 10 and sum(losses[-3:]) < sum(losses[:3])


@pytest.mark.slow
def test_streaming_with_packing_trains(kit, kit_shards, tmp_path, caplog):
    trainer = run(_streaming_args(kit, kit_shards, tmp_path / "out", "--packing True --max_steps 4"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert "--streaming: rows are shuffled within windows of 8 rows" in caplog.text
