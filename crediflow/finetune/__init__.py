"""Finetune: supervised fine-tuning on the labelled tokens (full or LoRA), through the shared
training routine `crediflow.models.training.train_sft`."""

from crediflow.finetune.config import FinetuneConfig

__all__ = ["FinetuneConfig"]
