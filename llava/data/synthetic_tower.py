"""Old name of `llava.data.tools.synthetic_tower`, kept for code that imports it."""

from llava.data.tools.synthetic_tower import *  # noqa: F403
