"""The evaluation files' readers and writers; they live in `llava.utils.jsonfiles` (one home for JSON and
JSON-lines reading), this name is kept for code that imports it."""

from llava.utils.jsonfiles import read_json, read_jsonl, read_jsonl_tolerant, write_json, write_jsonl

__all__ = ["read_json", "read_jsonl", "read_jsonl_tolerant", "write_json", "write_jsonl"]
