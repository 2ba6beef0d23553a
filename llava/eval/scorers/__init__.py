"""One small scorer per benchmark, written from each benchmark's own definition.

Each module holds pure functions (answers and ground truth in, numbers out); the command-line
entry points in ``llava.eval`` (``eval_pope``, ``eval_science_qa``, ...) and ``scripts/convert_*``
are thin wrappers around them.
"""
