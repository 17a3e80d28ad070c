"""XR-0 as a LeRobot policy plugin: `lerobot-train --policy.type=xr0`, `select_action`, RTC-style async chunks.

Importing the package registers `xr0` with LeRobot's policy registry (configuration_xr0); LeRobot finds
`modeling_xr0.XR0Policy` and `processor_xr0.make_xr0_pre_post_processors` by its naming convention.
"""

from .configuration_xr0 import XR0Config

__all__ = ["XR0Config"]
