"""Make the file MM-Vet's grader reads ({"v1_<id>": answer}) from an answers jsonl.

python scripts/convert_mmvet_for_eval.py --src answers/model.jsonl --dst results/model.json
    [--metadata mm-vet.json | lmms-lab MMVet parquet] [--metadata-dst mm-vet/mm-vet.json]

With --metadata the answers are listed in its order and checked complete; --metadata-dst writes it as
MM-Vet's mm-vet.json (the ground truth its mm-vet_evaluator reads), e.g. from lmms-lab's parquet.
"""

import argparse

from llava.eval.eval_mmvet import METADATA_HELP, read_metadata
from llava.eval.scorers.mmvet import answers_for_grader
from llava.utils.jsonfiles import read_jsonl, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--metadata", default=None, help=f"{METADATA_HELP}: list the answers in its order, "
                        "and refuse answers that miss a question or answer one it lacks")  # fmt: skip
    parser.add_argument("--metadata-dst", default=None, help="write --metadata as MM-Vet's mm-vet.json "
                        "(what its grader reads as the ground truth)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.metadata_dst and not args.metadata:
        parser.error("--metadata-dst needs --metadata (mm-vet.json or lmms-lab's MMVet parquet)")
    metadata = read_metadata(args.metadata) if args.metadata else None
    answers = answers_for_grader(read_jsonl(args.src, "MM-Vet answer file"), metadata)
    write_json(args.dst, answers, indent=2)
    if args.metadata_dst:
        write_json(args.metadata_dst, metadata, indent=2)
    return args.dst


if __name__ == "__main__":
    main()
