"""Everything between raw observations and model tensors: input checks (`checks`, numpy only), the prompt and
tokenizer, image patches (`Processor`) and state/action normalisation per robot type (`RobotSpec`).

Names load on first use, so `xr0.processing.checks` and `.normalize` stay importable without torch (the server).
"""

import importlib

_LAZY = {"Processor": "processor", "RobotSpec": "normalize", "stats_hash": "normalize", "qwen_tokenizer": "tokenizer",
         "FieldError": "checks"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
