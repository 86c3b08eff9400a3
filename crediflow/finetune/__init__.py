"""Finetune: supervised fine-tuning on the labelled tokens (full or LoRA), through the shared
training routine `crediflow.models.training.train_sft`, in one process or several
(`launch`: torchrun, data-parallel)."""

from crediflow.finetune.config import FinetuneConfig
from crediflow.finetune.launch import check_launch, launch, launch_args, launched, wants_launch

__all__ = ["FinetuneConfig", "check_launch", "launch", "launch_args", "launched",
           "wants_launch"]
