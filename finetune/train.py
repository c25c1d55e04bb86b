"""QLoRA fine-tuning: load the base model in 4-bit nf4, add LoRA adapters, train on the answer.

Backends (same data, same prompts, same collator and Trainer):

- ``peft``: transformers + bitsandbytes + PEFT (``prepare_model_for_kbit_training``, LoRA);
  works on CPU and GPU.
- ``unsloth``: Unsloth's ``FastLanguageModel`` (4-bit load and LoRA); CUDA only.
- ``auto``: Unsloth when it is importable and CUDA is available, PEFT otherwise.

Checkpoints go to ``OUT/checkpoints``; a run whose output directory already has one resumes
from the latest (the recipe and data must match; only ``max_steps``, ``save_steps`` and
``logging_steps`` may change). The product is ``OUT/adapter`` (safetensors only), with
``OUT/report.json``, ``OUT/loss.png`` and ``OUT/recipe.yaml`` beside it.

Training prompts carry the same retrieved knowledge inference will put in them (recipe key
``retrieval``). ``validation_size`` labelled sequences are held out of training (stratified,
seeded); after training the LLM voter scores them and its decision threshold is calibrated on
them (recorded in the adapter's ``flexlog-adapter.json``, which the voter reads).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .data import Collator, ExampleDataset, build_examples, load_training_data
from .recipe import Recipe, RecipeError, load_recipe
from .report import build_report, plot_loss, write_report

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
RUN_FILE = "flexlog-run.json"
ADAPTER_INFO = "flexlog-adapter.json"
PROMPT_FILE = "prompt.yaml"
#: What may differ between a run and the run it resumes.
RESUMABLE_CHANGES = {"max_steps", "save_steps", "logging_steps"}
#: LoRA targets for "all-linear" on Unsloth, which wants names (Llama / Mistral families).
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Plan:
    """Where and how a recipe runs on this machine."""

    backend: str
    device: str
    compute_dtype: str
    optimizer: str


def plan(recipe: Recipe) -> Plan:
    """Resolve the recipe's ``auto`` settings against this machine."""
    import torch

    cuda = torch.cuda.is_available()
    device = recipe.device if recipe.device != "auto" else ("cuda" if cuda else "cpu")
    if device == "cuda" and not cuda:
        raise RecipeError(f"{recipe.source}: device is cuda but no CUDA device is available")
    unsloth = importlib.util.find_spec("unsloth") is not None
    if recipe.backend == "unsloth":
        if not unsloth:
            raise RecipeError(f"{recipe.source}: backend unsloth but unsloth is not installed")
        if device != "cuda":
            raise RecipeError(f"{recipe.source}: backend unsloth needs a CUDA device")
        backend = "unsloth"
    elif recipe.backend == "auto" and unsloth and device == "cuda":
        backend = "unsloth"
    else:
        backend = "peft"
    if recipe.dtype != "auto":
        dtype = recipe.dtype
    elif device == "cuda":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    else:
        dtype = "float32"
    if recipe.optimizer != "auto":
        optimizer = recipe.optimizer
    elif device == "cuda" and recipe.quantization == "nf4":
        optimizer = "paged_adamw_8bit"  # as in the QLoRA paper
    else:
        optimizer = "adamw_torch"
    return Plan(backend, device, dtype, optimizer)


def split_validation(sequences: list, size: int, seed: int) -> tuple[list, list]:
    """Hold out ``size`` sequences, half of each label where possible (seeded). Nothing is held
    out when either label would keep fewer than four training sequences or lose all
    validation examples, so tiny data sets still train."""
    if size <= 0:
        return list(sequences), []
    rng = random.Random(seed)
    by_label = {lab: [i for i, s in enumerate(sequences) if s.label == lab] for lab in (0, 1)}
    half = size // 2
    take = {1: min(half, len(by_label[1]) - 4), 0: 0}
    take[0] = min(size - max(take[1], 0), len(by_label[0]) - 4)
    if take[0] < 1 or take[1] < 1:
        return list(sequences), []
    held = set()
    for lab in (0, 1):
        held.update(rng.sample(by_label[lab], take[lab]))
    train = [s for i, s in enumerate(sequences) if i not in held]
    return train, [s for i, s in enumerate(sequences) if i in held]


def knowledge_source(recipe: Recipe):
    """The retrieval the LLM voter does at inference, for rendering training prompts (None
    when the recipe trains without retrieval)."""
    if not recipe.retrieval:
        return None
    from flexlog.llm.prompting import Retriever

    retriever = Retriever(recipe.domain)
    return lambda seq: retriever(seq.events)


def calibrate(adapter: Path, recipe: Recipe, validation: list) -> dict:
    """Score the held-out sequences with the fine-tuned voter and tune its threshold; the
    result is written into the adapter's information file."""
    voter = recipe.llm_voter(adapter, threshold=0.0)
    log.info("calibrating the decision threshold on %d held-out sequences", len(validation))
    t0 = time.time()
    result = voter.calibrate([s.events for s in validation], [s.label for s in validation])
    result["seconds"] = round(time.time() - t0, 2)
    info_path = adapter / ADAPTER_INFO
    info = json.loads(info_path.read_text())
    info["threshold"] = result["threshold"]
    info["validation"] = result
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    return result


def _load_peft(recipe: Recipe, model_path: str, p: Plan):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dtype = getattr(torch, p.compute_dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if recipe.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=False,
        )
        kwargs["device_map"] = {"": 0 if p.device == "cuda" else "cpu"}
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if recipe.quantization == "nf4":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=recipe.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif p.device == "cuda":
        model = model.to("cuda")
    model.config.use_cache = False
    targets = recipe.target_modules
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config), tokenizer


def _load_unsloth(recipe: Recipe, model_path: str, p: Plan):  # pragma: no cover - CUDA only
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path,
        max_seq_length=recipe.max_seq_tokens,
        dtype=None,
        load_in_4bit=recipe.quantization == "nf4",
    )
    targets = recipe.target_modules
    model = FastLanguageModel.get_peft_model(
        model,
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=list(LLAMA_LINEAR if targets == "all-linear" else targets),
        bias="none",
        use_gradient_checkpointing="unsloth" if recipe.gradient_checkpointing else False,
        random_state=recipe.seed,
    )
    return model, tokenizer


def count_4bit_modules(model) -> int:
    """How many bitsandbytes 4-bit linear layers the model holds (0 without bitsandbytes)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    return sum(1 for m in model.modules() if isinstance(m, Linear4bit))


def _check_resumable(out: Path, recipe: Recipe, data_sha: str) -> None:
    """Refuse to resume checkpoints that another recipe or data set produced."""
    path = out / CHECKPOINT_DIR / RUN_FILE
    if not path.is_file():
        raise RecipeError(f"{out}: has checkpoints but no {RUN_FILE}; use a fresh --out")
    before = json.loads(path.read_text())
    if before.get("data_sha256") != data_sha:
        raise RecipeError(f"{out}: its checkpoints were trained on other data; use a fresh --out")
    now = recipe.to_dict()
    changed = sorted(
        k
        for k, v in before.get("recipe", {}).items()
        if k not in RESUMABLE_CHANGES and now.get(k) != v
    )
    if changed:
        raise RecipeError(
            f"{out}: its checkpoints come from a recipe that differs in {changed}; "
            "use a fresh --out (or --no-resume)"
        )


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = out / CHECKPOINT_DIR
    return get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None


def _load_checkpoint_adapter(model, checkpoint: Path) -> None:
    """Put a checkpoint's LoRA weights into ``model`` (safetensors only, never pickles)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file():
        raise RecipeError(f"{checkpoint}: no adapter_model.safetensors to resume from")
    result = set_peft_model_state_dict(model, load_file(str(weights)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RecipeError(f"{checkpoint}: adapter weights do not fit the model ({unexpected[:3]})")


def save_adapter(model, out: Path, recipe: Recipe, model_path: str, template) -> Path:
    """Write the LoRA adapter (safetensors only) plus what inference needs to use it."""
    target = out / ADAPTER_DIR
    if target.exists():
        shutil.rmtree(target)
    model.save_pretrained(str(target), safe_serialization=True)
    for stray in target.glob("*.bin"):
        stray.unlink()
    info = {
        "base_model": recipe.base_model,
        "base_model_path": model_path,
        "prompt": recipe.prompt,
        "prompt_version": template.version,
        "prompt_file": PROMPT_FILE,
        "labels": list(template.labels),
        "domain": recipe.domain,
        "max_seq_tokens": recipe.max_seq_tokens,
        "chat_template": True,
        "recipe": recipe.name,
    }
    (target / PROMPT_FILE).write_text(
        "# the prompt template this adapter was trained with (PromptTemplate.load this file)\n"
        + yaml.safe_dump(template_dict(template), sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    (target / ADAPTER_INFO).write_text(json.dumps(info, indent=1) + "\n")
    for path in target.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the adapter is meant to be shared
    return target


def template_dict(template) -> dict[str, Any]:
    """A prompt template as the mapping ``PromptTemplate.from_dict`` reads back."""
    from flexlog.llm.prompt import PARTS

    return {
        "name": template.name,
        "version": template.version,
        "labels": list(template.labels),
        "domains": dict(template.domains),
        **{part: getattr(template, part) for part in PARTS},
    }


def run(
    recipe: Recipe | str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    max_steps: int | None = None,
    seed: int | None = None,
    domain: str | None = None,
    resume: bool = True,
    threads: int | None = None,
) -> dict:
    """Fine-tune a recipe on a labelled canonical JSONL file; returns the report (a dict).

    ``max_steps``, ``seed`` and ``domain`` override the recipe. With ``resume`` (default) a run
    continues from the latest checkpoint in ``out_dir``; without it, old checkpoints are deleted
    first. ``threads`` sets torch's CPU threads (default: torch's own choice, one per core).
    """
    started = time.time()
    if threads is not None and threads < 1:
        raise RecipeError(f"threads must be >= 1, got {threads}")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    overrides = {"max_steps": max_steps, "seed": seed, "domain": domain}
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        recipe = recipe.replace(**changes)
    data = load_training_data(data_path)  # fail on bad data before loading any model
    log.info(
        "data: %d labelled sequences from %s (%d lines skipped)",
        len(data.sequences),
        data.path,
        len(data.skipped),
    )
    for why in data.skipped[:5]:
        log.warning("  skipped %s", why)

    import torch
    import transformers
    from transformers import Trainer, TrainingArguments

    from flexlog.llm.models import resolve_model
    from flexlog.llm.prompt import PromptTemplate

    p = plan(recipe)  # a GPU recipe on a machine without one fails here, before any output
    out = Path(out_dir)
    if not resume and (out / CHECKPOINT_DIR).exists():
        shutil.rmtree(out / CHECKPOINT_DIR)
    last = _last_checkpoint(out)
    if last:
        _check_resumable(out, recipe, data.sha256)
    out.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        torch.set_num_threads(threads)
    transformers.set_seed(recipe.seed)
    template = PromptTemplate.load(recipe.prompt)

    t0 = time.time()
    model_path = resolve_model(recipe.base_model)
    log.info(
        "model: %s (%s), %s backend on %s, %s compute",
        recipe.base_model,
        recipe.quantization,
        p.backend,
        p.device,
        p.compute_dtype,
    )
    if p.backend == "unsloth":
        model, tokenizer = _load_unsloth(recipe, model_path, p)
    else:
        model, tokenizer = _load_peft(recipe, model_path, p)
    load_seconds = time.time() - t0
    quantized = count_4bit_modules(model)
    if recipe.quantization == "nf4" and not quantized:
        raise RuntimeError("the base model was not loaded in 4 bit")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_seqs, validation = split_validation(data.sequences, recipe.validation_size, recipe.seed)
    examples = build_examples(
        train_seqs,
        tokenizer,
        template,
        domain=recipe.domain,
        max_seq_tokens=recipe.max_seq_tokens,
        knowledge=knowledge_source(recipe),
    )

    log.info(
        "examples: %d, longest %d tokens, %d shortened to fit %d",
        len(examples),
        max(len(e.input_ids) for e in examples),
        sum(e.elided for e in examples),
        recipe.max_seq_tokens,
    )
    ckpt_dir = out / CHECKPOINT_DIR
    ckpt_dir.mkdir(exist_ok=True)
    (ckpt_dir / RUN_FILE).write_text(
        json.dumps({"recipe": recipe.to_dict(), "data_sha256": data.sha256}, indent=1) + "\n"
    )
    recipe.dump(out / "recipe.yaml")
    cuda = p.device == "cuda"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup_steps,
        lr_scheduler_type=recipe.lr_scheduler,
        optim=p.optimizer,
        logging_steps=recipe.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        seed=recipe.seed,
        data_seed=recipe.seed,
        bf16=cuda and p.compute_dtype == "bfloat16",
        fp16=cuda and p.compute_dtype == "float16",
        use_cpu=not cuda,
        gradient_checkpointing=recipe.gradient_checkpointing and p.backend == "peft",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to=[],
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ExampleDataset(examples),
        data_collator=Collator(tokenizer.pad_token_id),
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start_step = 0
    t1 = time.time()
    if last:
        state = json.loads((Path(last) / "trainer_state.json").read_text())
        start_step = int(state["global_step"])
        log.info("resuming from %s (step %d)", last, start_step)
    if last and start_step >= recipe.max_steps:
        # Trainer would take one more step from a finished checkpoint: use its weights as
        # they are
        _load_checkpoint_adapter(trainer.model, Path(last))
        log_history, global_step = state.get("log_history", []), start_step
    else:
        trainer.train(resume_from_checkpoint=last)
        log_history, global_step = trainer.state.log_history, trainer.state.global_step
    train_seconds = time.time() - t1

    adapter = save_adapter(trainer.model, out, recipe, model_path, template)
    del trainer, model  # free the training copy before the voter loads its own
    gc.collect()
    validation_result = calibrate(adapter, recipe, validation) if validation else None
    report = build_report(
        recipe=recipe,
        plan=p,
        data=data,
        examples=examples,
        log_history=log_history,
        global_step=global_step,
        start_step=start_step,
        resumed_from=last,
        train_seconds=train_seconds,
        load_seconds=load_seconds,
        wall_seconds=time.time() - started,
        model_path=model_path,
        adapter_dir=adapter,
        cuda=cuda,
        quantized_modules=quantized,
    )
    report["validation"] = validation_result
    plot_loss(report["loss_history"], out / "loss.png", title=recipe.name)
    write_report(report, out / "report.json")
    return report
