"""Old name of `llava.data.tools.synthetic`, kept so that `python -m llava.data.synthetic` and imports keep working."""

from llava.data.tools.synthetic import *  # noqa: F403
from llava.data.tools.synthetic import main

if __name__ == "__main__":
    main()
