"""--skip_bad_samples with DataLoader workers: the replacements made in the worker processes reach
the main process, so the end-of-run summary counts them."""

import json
import pickle
from types import SimpleNamespace

import torch

# ruff: noqa: F811  (kit is a pytest fixture shared with tests/test_train.py)
from tests.test_train import kit, one_thread, run, stage2_args  # noqa: F401  (kit, one_thread: fixtures)


def _data_with_one_unreadable_image(kit, tmp_path):
    samples = json.loads(kit.finetune.read_text())
    bad = tmp_path / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # exists (so prepare passes), does not decode
    k = next(i for i, s in enumerate(samples) if "image" in s)
    samples[k]["image"] = str(bad)  # absolute: os.path.join(image_folder, it) is it
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    return path, len(samples)


def test_shared_counter_sums_over_workers_and_pickles_as_a_local_count():
    from llava.data.dataset import SharedCounter

    counter = SharedCounter()
    ctx = torch.multiprocessing.get_context("fork")
    procs = [ctx.Process(target=counter.add, args=(2,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert counter.value == 4
    copy = pickle.loads(pickle.dumps(counter))  # not at a process start: a plain (local) count
    assert copy.value == 4 and copy.add(1) == 5 and counter.value == 4


def test_replacements_in_workers_are_counted(kit, tmp_path):
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from llava.data.dataset import LazySupervisedDataset
    from llava.data.sample_format import SampleFormat
    from llava.model.multimodal_encoder.vision_tower import processor_class, resolve_tower_backend

    path, n = _data_with_one_unreadable_image(kit, tmp_path)
    tok = AutoTokenizer.from_pretrained(kit.llm)
    processor = processor_class(resolve_tower_backend(str(kit.vision))).from_pretrained(kit.vision)
    fmt = SampleFormat("v1", 256, is_multimodal=True, image_processor=processor, num_image_tokens=16)
    args = SimpleNamespace(image_folder=str(kit.images), skip_bad_samples=True, lengths_cache_dir=None)
    dataset = LazySupervisedDataset(str(path), tok, args, fmt)
    dataset.prepare()
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=len)
    assert sum(loader) == n
    assert dataset.skipped == 1  # replaced in a worker process, counted here


def test_end_of_run_summary_with_two_loader_workers(kit, tmp_path, caplog):
    path, n = _data_with_one_unreadable_image(kit, tmp_path)
    args = stage2_args(
        kit, tmp_path / "out", extra="--num_train_epochs 1 --save_strategy no --skip_bad_samples True"
    )
    args[args.index("--data_path") + 1] = str(path)
    args[args.index("--dataloader_num_workers") + 1] = "2"
    with caplog.at_level("WARNING", logger="llava"):
        trainer = run(args)
    assert trainer.state.global_step == n // 4
    summary = [
        r.getMessage() for r in caplog.records if "could not be loaded and were replaced" in r.getMessage()
    ]
    assert summary == ["--skip_bad_samples: 1 samples could not be loaded and were replaced"], summary
