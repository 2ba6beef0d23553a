"""Old name of `llava.data.tools.generate_instruct`, kept so that `python -m llava.data.generate_instruct` and imports keep working."""

from llava.data.tools.generate_instruct import *  # noqa: F403
from llava.data.tools.generate_instruct import main

if __name__ == "__main__":
    main()
