"""Fine-tuning recipes: one YAML file per base model, read into a frozen, validated :class:`Recipe`.

A recipe names its base model (anything :func:`flexlog.llm.models.resolve_model` accepts), the
prompt template and domain used to render the training examples, and the QLoRA and optimiser
settings. Unknown keys and out-of-range values are errors, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "smollm2-cpu"

QUANTIZATIONS = ("nf4", "none")
BACKENDS = ("auto", "unsloth", "peft")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = (
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
)
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Recipe:
    """Everything one fine-tuning run needs besides its data."""

    name: str
    base_model: str
    domain: str = "logs"
    prompt: str = "anomaly_detection"
    quantization: str = "nf4"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    max_steps: int = 500
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    warmup_steps: int = 10
    lr_scheduler: str = "linear"
    max_seq_tokens: int = 1024
    retrieval: bool = True
    validation_size: int = 32
    seed: int = 0
    save_steps: int = 50
    logging_steps: int = 1
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    optimizer: str = "auto"
    gradient_checkpointing: bool = True
    source: str = field(default="<dict>", compare=False)

    @classmethod
    def fields(cls) -> list[str]:
        """The keys a recipe file may contain."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "source"]

    @classmethod
    def from_dict(cls, data: object, *, source: str = "<dict>") -> Recipe:
        """Validate a mapping (e.g. parsed YAML) into a recipe; RecipeError on any problem."""
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe is a mapping of keys to values")
        allowed = cls.fields()
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise RecipeError(f"{source}: unknown keys {unknown}; allowed: {sorted(allowed)}")
        missing = [k for k in ("name", "base_model") if k not in data]
        if missing:
            raise RecipeError(f"{source}: missing required keys {missing}")
        values = {k: _check(k, v, source) for k, v in data.items()}
        recipe = cls(**values, source=source)
        recipe._check_prompt()
        return recipe

    def _check_prompt(self) -> None:
        from flexlog.llm.prompt import PromptTemplate

        try:
            template = PromptTemplate.load(self.prompt)
        except ValueError as exc:
            raise RecipeError(f"{self.source}: prompt: {exc}") from exc
        if self.domain not in template.domains:
            raise RecipeError(
                f"{self.source}: domain must be one of {sorted(template.domains)}, "
                f"got {self.domain!r}"
            )

    def llm_voter(self, adapter: str | Path, **params: Any):
        """The LLM voter that uses an adapter fine-tuned with this recipe (same base model,
        prompt, domain and retrieval); ``params`` override its other settings."""
        from flexlog.voters.llm import LLMVoter

        settings = {
            "model": self.base_model,
            "adapter": str(adapter),
            "domain": self.domain,
            "prompt": self.prompt,
            "retrieval": self.retrieval,
            "random_state": self.seed,
        }
        return LLMVoter(**{**settings, **params})

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed, validated like a file."""
        data = {**self.to_dict(), **changes}
        return Recipe.from_dict(data, source=self.source)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready values, in field order."""
        out: dict[str, Any] = {}
        for name in self.fields():
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def dump(self, path: str | Path) -> Path:
        """Write the resolved recipe as YAML (loadable with :func:`load_recipe`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# resolved fine-tuning recipe (from {self.source})\n"
        path.write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False), "utf-8")
        return path


_INT_MIN = {
    "lora_r": 1,
    "lora_alpha": 1,
    "max_steps": 1,
    "batch_size": 1,
    "gradient_accumulation_steps": 1,
    "warmup_steps": 0,
    "max_seq_tokens": 64,
    "validation_size": 0,
    "seed": 0,
    "save_steps": 1,
    "logging_steps": 1,
}
_CHOICES = {
    "quantization": QUANTIZATIONS,
    "backend": BACKENDS,
    "device": DEVICES,
    "dtype": DTYPES,
    "optimizer": OPTIMIZERS,
    "lr_scheduler": SCHEDULERS,
}


def _check(key: str, value: object, source: str) -> object:
    where = f"{source}: {key}"
    if key in _INT_MIN:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, got {value!r}")
        if value < _INT_MIN[key]:
            raise RecipeError(f"{where} must be >= {_INT_MIN[key]}, got {value}")
        return value
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise RecipeError(f"{where} must be one of {list(_CHOICES[key])}, got {value!r}")
        return value
    if key in ("learning_rate", "lora_dropout"):
        number = _float(value)
        if number is None:
            raise RecipeError(f"{where} must be a number, got {value!r}")
        if key == "learning_rate" and not 0 < number < 1:
            raise RecipeError(f"{where} must be in (0, 1), got {number}")
        if key == "lora_dropout" and not 0 <= number < 1:
            raise RecipeError(f"{where} must be in [0, 1), got {number}")
        return number
    if key == "target_modules":
        if value == "all-linear":
            return value
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(m, str) and m.strip() for m in value)
        ):
            return tuple(value)
        raise RecipeError(f"{where} must be 'all-linear' or a non-empty list of module names")
    if key in ("gradient_checkpointing", "retrieval"):
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, got {value!r}")
        return value
    # name, base_model, domain, prompt: non-empty strings
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def _float(value: object) -> float | None:
    # YAML 1.1 reads "2e-4" as a string; accept it as the number it obviously is.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def list_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path = DEFAULT_RECIPE) -> Recipe:
    """A shipped recipe by name (``smollm2-cpu``) or a recipe YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise RecipeError(
                f"no recipe named {str(name_or_path)!r}; shipped: {', '.join(list_recipes())}"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    return Recipe.from_dict(data, source=str(path))
