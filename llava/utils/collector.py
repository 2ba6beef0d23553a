"""The cyclic garbage collector at start-up: kept off the objects the libraries make once and keep.

Importing torch, transformers and peft makes about a million objects and next to no cyclic garbage,
yet CPython's collector walks all of them in each full pass: six passes during `import
llava.train.train` (about 1.4 s of 8 s on a 2-core machine), three more before the first training
step (accelerate's `free_memory` runs one on purpose). bench/RESULTS.md has the figures
(bench_startup.py).

- `collection_paused()`: no collection inside (an entry point's heavy imports);
- `frozen()`: the objects alive on entry move to the collector's permanent generation, so its passes
  skip them (`gc.freeze`); on exit they are ordinary objects again (`gc.unfreeze`), so a program
  that calls `train()` or the CLI's `main()` more than once (the tests do) keeps nothing frozen.
Objects are still freed by reference counting in both; only cyclic garbage made inside
`collection_paused()` waits for the next pass.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection inside; the collector's earlier state is restored after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def frozen() -> Iterator[None]:
    """The objects alive now are skipped by the collector's passes until the block ends. Does
    nothing where objects are frozen already (the program's own `gc.freeze`, which it keeps)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
