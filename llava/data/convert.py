"""`python -m llava.data.convert`: the parquet converter, `llava.data.tools.convert`, under the data package's
name (as `python -m llava.data.validate`)."""

from llava.data.tools.convert import *  # noqa: F403
from llava.data.tools.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
