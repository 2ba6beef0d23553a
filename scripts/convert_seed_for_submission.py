"""Score SEED-Bench answers (per question type, image, video, overall) and write the upload file.

python scripts/convert_seed_for_submission.py --annotation-file SEED-Bench.json --result-file merge.jsonl
    --result-upload-file answers_upload/model.jsonl

--annotation-file may be lmms-lab's SEED-Bench parquet instead of SEED-Bench.json (the ground truth is in it).
"""

import argparse

from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import seed_truth
from llava.eval.scorers.seed import score_seed, seed_upload
from llava.utils.jsonfiles import read_json, read_jsonl, write_jsonl


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True, help="SEED-Bench.json, or lmms-lab's SEED-Bench "
                        "parquet (a file, glob or folder of shards)")  # fmt: skip
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--result-upload-file", required=True)
    args = parser.parse_args(argv)
    if is_parquet_source(args.annotation_file):
        data = seed_truth(args.annotation_file)
    else:
        data = read_json(args.annotation_file, "SEED-Bench annotation file")
    answers = read_jsonl(args.result_file, "SEED-Bench answer file")
    res = score_seed(data, answers)
    for key in sorted(k for k in res if k not in ("overall", "missing") and not k.startswith("data_type/")):
        print(f"{key}: {res[key]:.2f}%")
    print(f"Total accuracy: {res['overall']:.2f}%")
    for key in ("data_type/image", "data_type/video"):
        if key in res:
            print(f"{key.split('/')[1]} accuracy: {res[key]:.2f}%")
    write_jsonl(args.result_upload_file, seed_upload(data, answers))
    return res


if __name__ == "__main__":
    main()
