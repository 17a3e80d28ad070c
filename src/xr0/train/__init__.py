"""Training: named recipes (stage1 / stage2 / post-sync / post-async) and one trainer for all of them.

config.py (TrainConfig) · recipes.py (what trains, per-batch loss options) · inputs.py (datasets, epoch order,
cameras, statistics) · optim.py (parameter groups, schedule, autocast dtype) · distributed.py (DDP/FSDP2) ·
state.py (RNG and optimiser state without pickle) · trainer.py (the loop and its checkpoints) · cli.py (`xr0 train`).
"""

from ..checkpoints import find_latest
from .config import TrainConfig
from .optim import lr_at, param_groups
from .recipes import RECIPES, Recipe, get_recipe
from .trainer import Trainer, TrainResult

__all__ = ["RECIPES", "Recipe", "TrainConfig", "TrainResult", "Trainer", "find_latest", "get_recipe", "lr_at",
           "param_groups"]
