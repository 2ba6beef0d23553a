"""LLaVA: large language-and-vision assistants (train, serve, evaluate).

Importing the package is cheap: the model classes load on first use, and so does bitsandbytes
(see `_defer_import`).
"""

import types

__version__ = "0.1.0"

_LAZY = {
    "LlavaLlamaForCausalLM": "llava.model",
    "LlavaMistralForCausalLM": "llava.model",
    "LlavaQwen2ForCausalLM": "llava.model",
}

# Imported by libraries at their own import time although only some runs use them.
_DEFERRED_IMPORTS = ("bitsandbytes",)


class _DeferredModule(types.ModuleType):
    """A module imported but not yet run: its code runs when an attribute it has not got yet is read.

    Its import metadata (`__spec__`, `__name__`, `__file__`) is there from the start, so
    `importlib.util.find_spec`, which libraries call to ask whether a package is installed, does not
    run it (importlib.util.LazyLoader's modules run on any attribute, `__spec__` included, so peft's
    check alone would load them). `__path__` is not, so importing a submodule runs the package first,
    as an eager import would.
    """

    def __getattr__(self, attr):
        state = self.__dict__
        if state.get("_deferred_running"):  # (read while its own code runs: not there yet)
            raise AttributeError(f"partially initialized module {self.__name__!r} has no attribute {attr!r}")
        spec = state["__spec__"]
        state["_deferred_running"] = True
        try:
            if spec.submodule_search_locations is not None:
                state["__path__"] = spec.submodule_search_locations
            spec.loader.exec_module(self)
        except BaseException:
            import sys

            sys.modules.pop(spec.name, None)  # a later `import` fails (or succeeds) as an eager one would
            raise
        finally:
            state.pop("_deferred_running", None)
        self.__class__ = types.ModuleType
        return getattr(self, attr)


def _defer_import(name: str) -> None:
    """Make `import name` cheap from now on: the module's code runs at its first use, not at import.

    transformers imports peft with its TrainingArguments (whenever peft is installed), and peft
    imports bitsandbytes at once; bitsandbytes then loads torch's inductor, 1.5-3 s of every
    training start, though only QLoRA and --load-4bit/--load-8bit runs use it. Deferred, those runs
    load it where they first touch it, and every other run never does. Nothing happens when the
    module is already imported or not installed.
    """
    import importlib.util
    import sys

    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return
    module = importlib.util.module_from_spec(spec)
    module.__dict__.pop("__path__", None)
    module.__class__ = _DeferredModule
    sys.modules[name] = module


for _name in _DEFERRED_IMPORTS:
    _defer_import(_name)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llava' has no attribute {name!r}")
