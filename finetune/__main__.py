"""``python -m finetune``: fine-tune a recipe on a labelled JSONL file."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .data import DataError
from .recipe import DEFAULT_RECIPE, RecipeError, list_recipes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m finetune",
        description="QLoRA fine-tuning of the FlexLog LLM voter on labelled log sequences.",
    )
    p.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help=f"recipe YAML path or shipped name ({', '.join(list_recipes())}); "
        f"default {DEFAULT_RECIPE}",
    )
    p.add_argument("--data", required=True, help="labelled canonical JSONL (the training set)")
    p.add_argument("--out", default="runs/finetune", help="output directory (default %(default)s)")
    p.add_argument(
        "--bundle",
        help="detector bundle (from `flexlog train`) to add the fine-tuned LLM voter to",
    )
    p.add_argument("--max-steps", type=int, help="override the recipe's max_steps")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--domain", help="override the recipe's prompt domain (syscalls, hdfs, logs)")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: one per core; 1 is faster on a busy machine)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="delete checkpoints in --out and start over instead of resuming",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logger = logging.getLogger(__package__ or "finetune")  # our messages only, not the libraries'
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        from .recipe import load_recipe
        from .report import format_summary

        recipe = load_recipe(args.recipe)
        from .train import run

        report = run(
            recipe,
            args.data,
            args.out,
            max_steps=args.max_steps,
            seed=args.seed,
            domain=args.domain,
            resume=not args.no_resume,
            threads=args.threads,
        )
    except (RecipeError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"error: fine-tuning needs torch, transformers, peft, bitsandbytes and accelerate "
            f"({exc})",
            file=sys.stderr,
        )
        return 2
    print(format_summary(report))
    if args.bundle:
        from .bundle import add_llm_voter

        try:
            trained = recipe.replace(**report["recipe"])  # with the command line's overrides
            voters = add_llm_voter(args.bundle, report["adapter_dir"], trained)
        except ValueError as exc:  # BundleError and voter validation errors
            print(f"error: {args.bundle}: {exc}", file=sys.stderr)
            return 2
        print(f"bundle {args.bundle}: voters {', '.join(voters)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
