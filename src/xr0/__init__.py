"""xr0: the Xiaomi-Robotics-0 vision-language-action policy in pure PyTorch + transformers.

Heavy names (torch, transformers) load on first use, so `import xr0.runtime` stays numpy-only.
"""

import importlib

__version__ = "0.1.0"
_LAZY = {
    "XR0Policy": "xr0.policy", "XR0Model": "xr0.model.vla", "LossOptions": "xr0.model.loss", "RobotSpec": "xr0.processing.normalize",
    "PolicyConfig": "xr0.config", "ExpertConfig": "xr0.config", "get_preset": "xr0.config", "PRESETS": "xr0.config",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xr0' has no attribute {name!r}")
