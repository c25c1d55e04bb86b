"""QLoRA fine-tuning of the FlexLog LLM voter: YAML recipes, answer-only training data, and a
Trainer loop that writes a self-contained LoRA adapter with its report.

``python -m finetune --recipe smollm2-cpu --data TRAIN.jsonl --out runs/finetune``; in code,
:func:`finetune.train.run`. Heavy imports (torch, transformers, peft) happen only when training.
"""

from __future__ import annotations

from .recipe import DEFAULT_RECIPE, Recipe, RecipeError, list_recipes, load_recipe

__all__ = ["DEFAULT_RECIPE", "Recipe", "RecipeError", "list_recipes", "load_recipe", "run"]


def run(*args, **kwargs) -> dict:
    """See :func:`finetune.train.run` (imported lazily)."""
    from .train import run as _run

    return _run(*args, **kwargs)
