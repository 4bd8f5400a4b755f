"""Trainer, schedules and safe, resumable checkpoints."""

from .checkpoint import load_model, save_model
from .device import autocast_dtype, default_device
from .schedule import lr_multiplier
from .trainer import Trainer, TrainResult, build_optimizer, make_accelerator, write_rows

__all__ = ["Trainer", "TrainResult", "autocast_dtype", "build_optimizer", "default_device", "load_model",
           "lr_multiplier", "make_accelerator", "save_model", "write_rows"]
