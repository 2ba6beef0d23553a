"""Old name of `llava.data.tools.validate`, kept so that `python -m llava.data.validate` keeps working."""

from llava.data.tools.validate import *  # noqa: F403
from llava.data.tools.validate import main

if __name__ == "__main__":
    main()
