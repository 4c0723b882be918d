"""Training: the Trainer (schedules, budgets, callbacks), checkpoints (safetensors + JSON),
the EMA of the weights, distributed set-up, and data loading."""

from .trainer import NonFiniteLoss, TrainConfig, Trainer

__all__ = ["NonFiniteLoss", "TrainConfig", "Trainer"]
