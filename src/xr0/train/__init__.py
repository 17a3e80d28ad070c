"""Training: named recipes (stage1 / stage2 / post-sync / post-async) and one trainer for all of them."""

from ..checkpoints import find_latest
from .recipes import RECIPES, Recipe, get_recipe
from .trainer import TrainConfig, Trainer, TrainResult, lr_at, param_groups

__all__ = ["RECIPES", "Recipe", "TrainConfig", "TrainResult", "Trainer", "find_latest", "get_recipe", "lr_at",
           "param_groups"]
