"""The fine-tuning recipe layer (finetune/): recipe validation, answer-only label masking on
SmolLM2's real tokenizer, a real nf4 QLoRA run on CPU, the Mistral code path and resuming.

Recipe and CLI-error tests need only flexlog; the rest skip without torch, transformers, peft
and bitsandbytes. Models are materialized once in the default ``~/.cache/flexlog``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("finetune") is None:  # plain `pytest` does not put the root on sys.path
    sys.path.insert(0, str(REPO))

from conftest import kept_by_git  # noqa: E402

from finetune.__main__ import main  # noqa: E402
from finetune.recipe import Recipe, RecipeError, list_recipes, load_recipe  # noqa: E402
from flexlog.data.adfa import load_adfa  # noqa: E402
from flexlog.data.records import LogSequence, write_jsonl  # noqa: E402
from flexlog.detector import Detector  # noqa: E402

LLM_STACK = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


@pytest.fixture(scope="module")
def llm_stack() -> None:
    for name in LLM_STACK:
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def train8(tmp_path_factory, adfa_sample_dir: Path) -> Path:
    """8 labelled sequences (4 normal, 4 attacks) of the shipped ADFA-LD sample, via flexlog."""
    corpus = load_adfa(adfa_sample_dir)
    attacks = [s for seqs in corpus.attacks.values() for s in seqs]
    rng = random.Random(0)
    seqs = rng.sample(corpus.training, 4) + rng.sample(attacks, 4)
    rng.shuffle(seqs)
    path = tmp_path_factory.mktemp("finetune-data") / "train8.jsonl"
    write_jsonl(path, seqs)
    return path


def _base(**extra) -> dict:
    return {"name": "t", "base_model": "smollm2", **extra}


# ---------------------------------------------------------------- recipes


def test_shipped_recipes_load_and_round_trip(tmp_path: Path) -> None:
    assert set(list_recipes()) >= {
        "smollm2-cpu",
        "mistral-7b-instruct",
        "mistral-small-22b",
        "tiny-mistral",
    }
    for name in list_recipes():
        recipe = load_recipe(name)
        assert recipe.name == name
        assert (recipe.lora_r, recipe.lora_alpha, recipe.batch_size) == (16, 16, 1)
        assert recipe.quantization == "nf4"
        assert load_recipe(recipe.dump(tmp_path / f"{name}.yaml")) == recipe
    assert load_recipe() == load_recipe(REPO / "finetune" / "recipes" / "smollm2-cpu.yaml")
    assert load_recipe("mistral-small-22b").base_model == "mistralai/Mistral-Small-Instruct-2409"
    assert load_recipe("mistral-7b-instruct").base_model == "mistralai/Mistral-7B-Instruct-v0.3"


def test_recipe_unknown_key_is_named_with_the_allowed_ones() -> None:
    with pytest.raises(RecipeError, match=r"unknown keys \['lora_rank'\]") as info:
        Recipe.from_dict(_base(lora_rank=16), source="r.yaml")
    assert "lora_r" in str(info.value) and "r.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("quantization", "int8"),
        ("lora_r", 0),
        ("lora_r", True),
        ("lora_alpha", 16.5),
        ("lora_dropout", 1.5),
        ("learning_rate", "fast"),
        ("learning_rate", 0),
        ("max_steps", -1),
        ("max_seq_tokens", 10),
        ("target_modules", []),
        ("target_modules", "attention"),
        ("backend", "vllm"),
        ("device", "tpu"),
        ("dtype", "int4"),
        ("domain", "web"),
        ("prompt", "no_such_template"),
        ("gradient_checkpointing", "yes"),
        ("name", ""),
    ],
)
def test_recipe_bad_value_is_rejected(key: str, value: object) -> None:
    with pytest.raises(RecipeError, match=key if key != "prompt" else "prompt"):
        Recipe.from_dict(_base(**{key: value}))


def test_recipe_values_are_normalized() -> None:
    recipe = Recipe.from_dict(_base(learning_rate="2e-4", target_modules=["q_proj", "v_proj"]))
    assert recipe.learning_rate == pytest.approx(2e-4)
    assert recipe.target_modules == ("q_proj", "v_proj")
    with pytest.raises(RecipeError, match="missing required keys"):
        Recipe.from_dict({"name": "x"})
    with pytest.raises(RecipeError, match="max_steps"):
        load_recipe("tiny-mistral").replace(max_steps=0)


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path, capsys, train8: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_base(lora_rank=8)))
    unlabelled = tmp_path / "unlabelled.jsonl"
    write_jsonl(unlabelled, [LogSequence("a", ("open", "read")), LogSequence("b", ("read",))])
    cases = [
        (["--recipe", str(bad), "--data", str(train8)], "unknown keys ['lora_rank']"),
        (["--recipe", "no-such-recipe", "--data", str(train8)], "no recipe named"),
        (["--data", str(tmp_path / "missing.jsonl")], "no such training data file"),
        (["--data", str(unlabelled)], "no labelled sequences"),
        (["--recipe", "tiny-mistral", "--data", str(train8), "--max-steps", "0"], "max_steps"),
        (["--data", str(train8), "--threads", "0"], "threads"),
    ]
    for argv, expected in cases:
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        assert expected in err, err
    assert not (tmp_path / "out").exists()


def test_gpu_recipe_without_a_gpu_is_a_clean_error(
    llm_stack, tmp_path: Path, capsys, train8: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = ["--recipe", "mistral-7b-instruct", "--data", str(train8), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", "--data", str(tmp_path / "none.jsonl")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'none.jsonl'}: no such training data file"


# ---------------------------------------------------------------- data


@pytest.fixture(scope="module")
def smollm2_tokenizer(llm_stack):
    from transformers import AutoTokenizer

    from flexlog.llm.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2"))


def test_labels_are_masked_except_the_answer(smollm2_tokenizer) -> None:
    from finetune.data import IGNORE_INDEX, Collator, build_examples, prompt_ids
    from flexlog.llm.prompt import PromptTemplate

    tok = smollm2_tokenizer
    template = PromptTemplate.load("anomaly_detection")
    seqs = [
        LogSequence("n", ("open", "read", "read", "close"), 0),
        LogSequence("a", ("execve", "socket", "connect", "dup2", "dup2"), 1),
    ]
    examples = build_examples(seqs, tok, template, domain="syscalls", max_seq_tokens=512)
    for seq, ex in zip(seqs, examples, strict=True):
        assert len(ex.labels) == len(ex.input_ids)
        answer = [i for i, t in enumerate(ex.labels) if t != IGNORE_INDEX]
        # one contiguous block at the very end: the label word and the end-of-turn token
        assert answer == list(range(answer[0], len(ex.labels)))
        assert all(t == IGNORE_INDEX for t in ex.labels[: answer[0]])
        assert [ex.labels[i] for i in answer] == [ex.input_ids[i] for i in answer]
        word = template.labels[seq.label]
        assert tok.decode([ex.input_ids[i] for i in answer]) == f"{word}<|im_end|>"
        # what precedes the answer is exactly what inference feeds the model
        rendered = template.render(seq.events, domain="syscalls")
        assert ex.input_ids[: answer[0]] == prompt_ids(tok, rendered)
        assert tok.decode(ex.input_ids[: answer[0]]).endswith(
            "label:<|im_end|>\n<|im_start|>assistant\n"
        )

    batch = Collator(tok.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    )
    short = min(range(2), key=lambda i: len(examples[i].input_ids))
    n = len(examples[short].input_ids)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][short, n:] == 0).all()
    assert (batch["attention_mask"][short, :n] == 1).all()


def test_long_sequences_are_budgeted(smollm2_tokenizer) -> None:
    from finetune.data import IGNORE_INDEX, build_examples
    from flexlog.llm.prompt import PromptTemplate

    long = LogSequence("long", tuple(f"call{i % 97}" for i in range(3000)), 1)
    (ex,) = build_examples(
        [long], smollm2_tokenizer, PromptTemplate.load(), domain="syscalls", max_seq_tokens=300
    )
    assert ex.elided and 250 < len(ex.input_ids) <= 300
    assert smollm2_tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX]).startswith(
        "anomalous"
    )


# ---------------------------------------------------------------- training


def _check_outputs(out: Path, report: dict, recipe_name: str) -> None:
    adapter = out / "adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "flexlog-adapter.json",
        "prompt.yaml",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as fh:
        keys = list(fh.keys())
    assert keys and all("lora_" in k for k in keys)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (16, 16, "CAUSAL_LM")
    info = json.loads((adapter / "flexlog-adapter.json").read_text())
    assert info["labels"] == ["normal", "anomalous"] and info["domain"] == "syscalls"
    # the adapter carries the exact prompt template it was trained with
    from flexlog.llm.prompt import PromptTemplate

    assert PromptTemplate.load(adapter / info["prompt_file"]) == PromptTemplate.load()

    assert json.loads((out / "report.json").read_text()) == report
    for key in (
        "recipe",
        "steps",
        "wall_seconds",
        "seconds_per_step",
        "final_loss",
        "mean_loss",
        "peak_memory",
        "versions",
        "backend",
        "data",
        "tokens",
        "quantization",
    ):
        assert key in report, key
    assert report["backend"] == "peft" and report["device"] == "cpu"
    assert report["quantization"]["linear4bit_modules"] > 0  # the base really is 4-bit
    assert math.isfinite(report["final_loss"]) and math.isfinite(report["mean_loss"])
    assert report["peak_memory"]["max_rss_mib"] > 100
    assert report["versions"]["peft"] and report["versions"]["bitsandbytes"]
    assert len(report["data"]["sha256"]) == 64 and report["data"]["sequences"] == 8
    assert report["tokens"]["per_step_mean"] > 50
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_recipe(out / "recipe.yaml").name == recipe_name


@pytest.mark.slow
def test_qlora_smollm2_nf4_on_cpu(llm_stack, train8: Path, tmp_path: Path) -> None:
    import torch

    from finetune.train import run

    recipe = load_recipe("smollm2-cpu").replace(max_seq_tokens=256, logging_steps=1)
    threads = torch.get_num_threads()
    try:  # one thread: several times faster than two when other jobs share the cores
        report = run(recipe, train8, tmp_path / "run", max_steps=4, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert report["torch_threads"] == 1
    _check_outputs(tmp_path / "run", report, "smollm2-cpu")
    assert report["steps"] == 4 and report["steps_this_run"] == 4
    assert [e["step"] for e in report["loss_history"]] == [1, 2, 3, 4]
    assert report["tokens"]["per_example_max"] <= 256
    assert report["recipe"]["max_steps"] == 4


@pytest.fixture(scope="module")
def tiny_mistral_run(llm_stack, train8: Path, tmp_path_factory) -> Path:
    """Two steps of the tiny-mistral recipe through the CLI, checkpointing at step 2."""
    out = tmp_path_factory.mktemp("tiny-mistral") / "run"
    recipe = load_recipe("tiny-mistral").replace(save_steps=2, max_seq_tokens=256)
    path = recipe.dump(out.parent / "tiny.yaml")
    argv = ["--recipe", str(path), "--data", str(train8), "--out", str(out), "--max-steps", "2"]
    assert main(argv) == 0
    return out


@pytest.mark.slow
def test_tiny_mistral_recipe_runs(tiny_mistral_run: Path, train8: Path, tmp_path: Path) -> None:
    from finetune.train import run

    out = tiny_mistral_run
    report = json.loads((out / "report.json").read_text())
    _check_outputs(out, report, "tiny-mistral")
    assert report["steps"] == 2 and report["resumed_from"] is None
    base = json.loads((Path(report["base_model_path"]) / "config.json").read_text())
    assert base["model_type"] == "mistral"
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    # seeded: the same recipe and data give the same losses
    again = run(load_recipe(out / "recipe.yaml"), train8, tmp_path / "again")
    assert again["loss_history"] == report["loss_history"]


@pytest.mark.slow
def test_rerun_with_more_steps_resumes(tiny_mistral_run: Path, train8: Path) -> None:
    from finetune.train import run

    out = tiny_mistral_run
    recipe = load_recipe(out / "recipe.yaml")
    first = json.loads((out / "report.json").read_text())
    # a changed recipe must not silently continue someone else's checkpoints
    with pytest.raises(RecipeError, match="lora_r"):
        run(recipe.replace(lora_r=8), train8, out, max_steps=4)

    report = run(recipe, train8, out, max_steps=4)
    assert report["resumed_from"] == str(out / "checkpoints" / "checkpoint-2")
    assert report["steps"] == 4 and report["steps_this_run"] == 2
    history = report["loss_history"]
    assert [e["step"] for e in history] == [1, 2, 3, 4]
    assert history[:2] == first["loss_history"]  # the first run's log came back with the state
    assert (out / "checkpoints" / "checkpoint-4").is_dir()

    # a finished run asked again trains no further step and keeps the checkpoint's weights
    import torch
    from safetensors.torch import load_file

    done = run(recipe, train8, out, max_steps=4)
    assert done["steps"] == 4 and done["steps_this_run"] == 0
    assert not (out / "checkpoints" / "checkpoint-5").exists()
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    checkpoint = load_file(str(out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"))
    assert saved.keys() == checkpoint.keys()
    assert all(torch.equal(saved[k], checkpoint[k]) for k in saved)


# ---------------------------------------------------------------- validation and the bundle
def test_validation_split_is_stratified_seeded_and_skipped_on_tiny_data() -> None:
    from finetune.train import split_validation

    seqs = [LogSequence(f"s{i}", ["open", "read"], label=int(i % 3 == 0)) for i in range(60)]
    train, held = split_validation(seqs, 10, seed=1)
    assert len(held) == 10 and sum(s.label for s in held) == 5
    assert {s.id for s in train}.isdisjoint(s.id for s in held)
    assert len(train) + len(held) == 60
    assert [s.id for s in split_validation(seqs, 10, seed=1)[1]] == [s.id for s in held]
    tiny = seqs[:8]  # three anomalous: holding any out would leave fewer than four
    assert split_validation(tiny, 4, seed=0) == (tiny, [])
    assert split_validation(seqs, 0, seed=0) == (seqs, [])


@pytest.fixture(scope="module")
def train40(tmp_path_factory, adfa_sample_dir: Path) -> Path:
    """40 labelled ADFA-LD sample sequences, half attacks: enough to hold some out."""
    corpus = load_adfa(adfa_sample_dir)
    attacks = [s for seqs in corpus.attacks.values() for s in seqs]
    rng = random.Random(1)
    seqs = rng.sample(corpus.training, 20) + rng.sample(attacks, 20)
    path = tmp_path_factory.mktemp("finetune-data") / "train40.jsonl"
    write_jsonl(path, seqs)
    return path


@pytest.mark.slow
def test_finetune_calibrates_and_joins_the_bundle(llm_stack, train40: Path, tmp_path: Path):
    """Held-out sequences calibrate the threshold; --bundle adds the fourth voter."""
    from flexlog.bundle import load_bundle
    from flexlog.cli import main as flexlog_main
    from flexlog.data.records import read_jsonl

    bundle = tmp_path / "bundle"
    train = ["train", "--train", str(train40), "--voters", "ml", "--out", str(bundle)]
    assert flexlog_main(train) == 0
    recipe = load_recipe("tiny-mistral").replace(max_seq_tokens=256)
    path = recipe.dump(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    argv = ["--recipe", str(path), "--data", str(train40), "--out", str(out)]
    assert main([*argv, "--max-steps", "2", "--bundle", str(bundle)]) == 0

    report = json.loads((out / "report.json").read_text())
    val = report["validation"]
    assert val["sequences"] == 8 and report["data"]["sequences"] == 40
    assert report["data"]["training_examples"] == 32  # the 8 held out are not trained on
    info = json.loads((out / "adapter" / "flexlog-adapter.json").read_text())
    assert info["threshold"] == val["threshold"] and 0.0 <= val["f1"] <= 1.0
    assert val["f1"] >= val["f1_at_zero"]  # the calibrated cut is never worse on its own data

    loaded = load_bundle(bundle)
    assert loaded.detector.voter_names == ["knn", "dt", "slfn", "llm"]
    llm = dict(loaded.detector.ensemble.voters)["llm"]
    assert llm.threshold_ == pytest.approx(val["threshold"])
    seqs, _ = read_jsonl(train40)
    every = Detector(loaded.detector.ensemble, short_circuit=False)
    verdicts = every.predict(seqs[:3])
    assert [sorted(v.votes) for v in verdicts] == [["dt", "knn", "llm", "slfn"]] * 3
    assert loaded.detector.ensemble.order[-1] == "llm"  # asked last, only where needed


def _web_holdout_run(
    recipe: str, datasets_dir: Path, tmp_path: Path, *, test_limit: int
) -> tuple[list[str], Path]:
    """Arguments of a small LLM experiment (ADFA-U web holdout, seed 0, 2 fine-tuning steps,
    the LLM alone on 6 sequences) and the folder it writes."""
    path = load_recipe(recipe).replace(max_seq_tokens=256).dump(tmp_path / "recipe.yaml")
    out = tmp_path / "runs" / "llm"
    argv = ["--recipe", str(path), "--steps", "2", "--holdouts", "web", "--seeds", "0"]
    argv += ["--test-limit", str(test_limit), "--llm-alone", "6", "--threads", "1"]
    argv += ["--datasets", str(datasets_dir), "--out", str(out)]
    return argv, out


@pytest.mark.slow
def test_llm_experiment_reports_rows_and_shares(
    llm_stack, datasets_dir: Path, tmp_path: Path, capsys
):
    """The LLM experiment on one ADFA-U holdout (tiny Mistral, 2 steps): every row, the share
    of sequences the ensembles asked the LLM about, and a report `flexlog report` reads."""
    from finetune.experiment import MODELS
    from finetune.experiment import main as experiment
    from flexlog.report import build_report

    argv, out = _web_holdout_run("tiny-mistral", datasets_dir, tmp_path, test_limit=24)
    assert experiment(argv) == 0
    result = json.loads((out / "results.json").read_text())["web/0"]
    assert set(MODELS) <= set(result)
    info = result["info"]
    assert info["test_sequences"] == 24 and info["llm_alone_sequences"] == 6
    assert all(0 <= share <= 1 for share in info["llm_asked_share"].values())
    assert result["llm"]["scored"] == 6
    report = json.loads((out / "report" / "results.json").read_text())
    assert report["kind"] == "llm-adfa-u" and report["variants"] == ["web"]
    markdown = build_report(tmp_path / "runs", tmp_path / "docs")
    assert "holdouts web only, so no published figure" in markdown
    assert "scored on 6 of the 24 test sequences" in markdown
    assert "| LLM alone (on a subset of the test sets) |" in markdown
    assert experiment(argv) == 0  # resumes: nothing left to compute
    # a row added later is computed alone: no new fine-tuning, the LLM's answers reused
    fine_tuned = (out / "web-0" / "finetune" / "report.json").stat().st_mtime_ns
    answers = json.loads((out / "web-0" / "llm-answers-llm.json").read_text())
    assert answers and all(0 <= p <= 1 for _, p in answers)
    results = json.loads((out / "results.json").read_text())
    stacked = results["web/0"].pop("flexlog:stacked")
    (out / "results.json").write_text(json.dumps(results))
    assert experiment(argv) == 0
    again = json.loads((out / "results.json").read_text())["web/0"]
    assert again["flexlog:stacked"]["f1"] == stacked["f1"]
    assert (out / "web-0" / "finetune" / "report.json").stat().st_mtime_ns == fine_tuned
    # configurations in the file that were not asked for stay out of the report
    results = json.loads((out / "results.json").read_text())
    results["web/7"] = results["web/0"]
    (out / "results.json").write_text(json.dumps(results))
    assert experiment(argv) == 0
    assert json.loads((out / "report" / "results.json").read_text())["seeds"] == [0]
    # without --llm-alone the LLM-alone rows are extended to the whole test set, the other
    # rows kept and the sequences asked before not asked again
    asked = len(json.loads((out / "web-0" / "llm-answers-llm.json").read_text()))
    full = [a for a in argv if a not in ("--llm-alone", "6")]
    assert experiment(full) == 0
    extended = json.loads((out / "results.json").read_text())["web/0"]
    assert extended["llm"]["scored"] == extended["llm-no-rag"]["scored"] == 24
    assert extended["info"]["llm_alone_sequences"] == 24
    assert extended["flexlog"] == result["flexlog"] and extended["knn"] == result["knn"]
    kept = json.loads((out / "web-0" / "llm-answers-llm.json").read_text())
    assert asked <= len(kept) <= 24
    assert "| LLM alone (on a subset" not in build_report(tmp_path / "runs", tmp_path / "d2")
    assert experiment(argv) == 0  # a smaller --llm-alone keeps the full rows
    assert json.loads((out / "results.json").read_text())["web/0"]["llm"]["scored"] == 24
    # in parallel jobs a configuration that fails is reported, the others are recorded and
    # the run exits non-zero (here java/0's folder holds an adapter for another training set)
    (out / "java-0" / "finetune" / "adapter").mkdir(parents=True)
    (out / "java-0" / "limited_train.jsonl").write_text("{}\n")
    results = json.loads((out / "results.json").read_text())
    results["web/0"].pop("flexlog:stacked")
    (out / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    both = [*argv, "--holdouts", "web,java", "--jobs", "2"]
    assert experiment(both) == 1
    err = capsys.readouterr().err
    assert "java/0: failed, the others go on" in err and "differs from the limited" in err
    assert "failed: java/0; the same command runs them again" in err
    again = json.loads((out / "results.json").read_text())
    assert again["web/0"]["flexlog:stacked"]["f1"] == stacked["f1"] and "java/0" not in again


@pytest.mark.slow
def test_llm_experiment_with_vllm(llm_stack, datasets_dir: Path, tmp_path: Path) -> None:
    """The LLM rows scored by an in-process vLLM engine (SmolLM2, adapter merged; vLLM's CPU
    attention has no kernel for tiny Mistral's head size): each row records its backend, the
    answers are kept per backend, a row added later with another backend leaves the others
    alone, and where both backends answered the same sequences their agreement is recorded
    and reported."""
    pytest.importorskip("vllm")
    from finetune.experiment import LLM_ALONE_ROWS, WITH_LLM
    from finetune.experiment import main as experiment
    from flexlog.report import build_report

    argv, out = _web_holdout_run("smollm2-cpu", datasets_dir, tmp_path, test_limit=16)
    assert experiment([*argv, "--llm-backend", "vllm"]) == 0
    result = json.loads((out / "results.json").read_text())["web/0"]
    assert {result[m]["backend"] for m in (*WITH_LLM, *LLM_ALONE_ROWS)} == {"vllm"}
    assert result["llm"]["scored"] == result["llm-no-rag"]["scored"] == 6
    answers = json.loads((out / "web-0" / "llm-answers-llm@vllm.json").read_text())
    assert len(answers) >= 6 and all(0 <= p <= 1 for _, p in answers)
    assert not (out / "web-0" / "llm-answers-llm.json").exists()
    # the LLM alone again with the default backend: the other rows keep vLLM's figures
    results = json.loads((out / "results.json").read_text())
    results["web/0"].pop("llm")
    (out / "results.json").write_text(json.dumps(results))
    assert experiment(argv) == 0
    again = json.loads((out / "results.json").read_text())["web/0"]
    assert again["llm"]["backend"] == "transformers" and again["llm"]["scored"] == 6
    assert again["flexlog"] == result["flexlog"]
    assert again["llm-no-rag"] == result["llm-no-rag"]
    measured = again["info"]["llm_agreement"]["llm: transformers vs vllm"]
    assert measured["sequences"] >= 6 and 0 <= measured["agreement"] <= 1
    summary = json.loads((out / "report" / "results.json").read_text())["summary"]
    assert summary["llm_backends"]["llm"] == ["transformers"]
    assert summary["llm_backends"]["flexlog"] == ["vllm"]
    assert summary["llm_agreement"]["llm: transformers vs vllm"]["configurations"] == 1
    markdown = build_report(tmp_path / "runs", tmp_path / "docs")
    assert "| FlexLog: KNN + DT + SLFN + LLM, majority (vllm backend) |" in markdown
    assert "their labels agreed: llm: transformers vs vllm:" in markdown


@pytest.mark.slow
def test_llm_experiment_on_synhdfs_u_shares_one_adapter_per_seed(
    llm_stack, datasets_dir: Path, tmp_path: Path, capsys
):
    """SynHDFS-U changes test sets only, so its ratios train on one limited set per seed: one
    fine-tuning (with the HDFS prompt domain) and one store of LLM answers serve them all, and
    the report lists the published HDFS v1 figures apart from ours (other data)."""
    from finetune.experiment import main as experiment
    from flexlog.report import build_report

    recipe = load_recipe("tiny-mistral").replace(max_seq_tokens=256)
    path = recipe.dump(tmp_path / "tiny.yaml")
    out = tmp_path / "runs" / "llm-syn"
    argv = ["--dataset", "synhdfs-u", "--recipe", str(path), "--steps", "2", "--seeds", "0"]
    argv += ["--variants", "0.05,0.3", "--test-limit", "16", "--llm-alone", "4"]
    argv += ["--threads", "1", "--datasets", str(datasets_dir), "--out", str(out)]
    assert experiment(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results) == ["0.05/0", "0.3/0"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["report", "seed-0"]
    fine_tuned = load_recipe(out / "seed-0" / "finetune" / "recipe.yaml")
    assert fine_tuned.domain == "hdfs" and fine_tuned.max_steps == 2
    answers = json.loads((out / "seed-0" / "llm-answers-llm.json").read_text())
    assert {e for events, _ in answers for e in events} <= {f"E{i}" for i in range(1, 30)}
    report = json.loads((out / "report" / "results.json").read_text())
    assert report["kind"] == "llm-synhdfs-u" and report["variants"] == ["0.05", "0.3"]
    markdown = build_report(tmp_path / "runs", tmp_path / "docs")
    assert "### The LLM voter on SynHDFS-U" in markdown and "ratios 0.05, 0.3 only" in markdown
    assert "Published on HDFS v1 (other data, so not beside ours): FlexLog 0.971" in markdown
    # git keeps the report's input and the resume point, not adapters or LLM answers
    assert kept_by_git(tmp_path / "runs") == {"llm-syn/results.json", "llm-syn/report/results.json"}
    # a ratio that is not one of SynHDFS-U's is named in a clear error
    capsys.readouterr()
    assert experiment([*argv[:8], "--variants", "0.5", *argv[10:]]) == 2
    assert "0.5 not a variant of synhdfs-u; known: 0.05, 0.1, 0.2, 0.3" in capsys.readouterr().err
