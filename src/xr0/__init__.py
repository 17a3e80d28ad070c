"""xr0: the Xiaomi-Robotics-0 vision-language-action policy in pure PyTorch + transformers."""

from .config import ExpertConfig, PolicyConfig, get_preset, PRESETS
from .model.policy import LossOptions, XR0Policy
from .processing import RobotSpec

__all__ = ["XR0Policy", "LossOptions", "PolicyConfig", "ExpertConfig", "RobotSpec", "get_preset", "PRESETS"]
__version__ = "0.1.0"
