"""Make the MMBench upload sheet (.xlsx) from an answers jsonl (round-0 answers as the prediction column).

python scripts/convert_mmbench_for_submission.py --annotation-file mmbench_dev_20230712.tsv
    --result-dir answers/mmbench_dev_20230712 --upload-dir answers_upload/mmbench_dev_20230712 --experiment model
reads <result-dir>/<experiment>.jsonl, writes <upload-dir>/<experiment>.xlsx (needs pandas + openpyxl).
"""

import argparse
import io
import os

from llava.eval.scorers.mmbench import submission_frame
from llava.utils.atomic import atomic_write_bytes
from llava.utils.jsonfiles import read_jsonl


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True)
    parser.add_argument("--result-dir", required=True)
    parser.add_argument("--upload-dir", required=True)
    parser.add_argument("--experiment", required=True)
    args = parser.parse_args(argv)
    try:
        import openpyxl  # noqa: F401
        import pandas as pd
    except ImportError as e:
        raise SystemExit(
            f"writing the MMBench sheet needs pandas and openpyxl ({e}): pip install -e '.[eval]'"
        ) from e
    if not os.path.isfile(args.annotation_file):
        raise SystemExit(f"MMBench question file not found: {args.annotation_file}")
    answers = read_jsonl(os.path.join(args.result_dir, f"{args.experiment}.jsonl"), "MMBench answer file")
    sheet = submission_frame(pd.read_table(args.annotation_file), answers)
    buf = io.BytesIO()
    sheet.to_excel(buf, index=False, engine="openpyxl")
    dst = os.path.join(args.upload_dir, f"{args.experiment}.xlsx")
    atomic_write_bytes(dst, buf.getvalue())
    print(f"wrote {dst} ({int(sheet['prediction'].notna().sum())} of {len(sheet)} answered)")
    return dst


if __name__ == "__main__":
    main()
