"""sisa's one-shard training side by side with TRL's `SFTTrainer` (issue 32, section 3).

    make install                                          # installs trl too (the `benchmarks` extra)
    .venv/bin/python benchmarks/trainer.py                # SmolLM2, 10 TOFU authors (~15 min here)
    .venv/bin/python benchmarks/trainer.py --model tiny --authors 2 --shards 0     # seconds
    .venv/bin/python benchmarks/trainer.py --lr-scheduler cosine --warmup-ratio 0.1   # needs the
                                                          # trainer of issue 32 section 2 on main

trl is never a runtime dependency of sisa: it is in the `benchmarks` extra (`uv pip install -e '.[benchmarks]'
-c requirements.lock`, which `make install` does).

Both sides train the same TOFU chat records (the first `--authors` authors of
`../shared/data/tofu/full.jsonl`, 20 question/answer pairs each) on the same base (sisa's loader
gives TRL a plain HF folder), with the same LoRA rank, alpha and target modules, learning rate and
schedule, epochs, `max_length`, records per step, gradient clipping and torch thread count; the
loss on the assistant's turn only (sisa `training.loss_on=completion` with
`training.prompt_loss_weight=0`, TRL a conversational
prompt-completion dataset, whose completion-only loss is TRL's default). One function,
`configs_for`, maps the shared `Setting` to both configs.
  sisa   `pipelines.ingest.run` + `pipelines.train.run` into a fresh store: the serial backend,
         tracking off, one slice a shard; the shard adapter is read from its checkpoint.
  TRL    `SFTTrainer(model, SFTConfig, peft_config=LoraConfig)` on a `datasets.Dataset`, fp32,
         no gradient checkpointing (sisa has none yet), no checkpoints saved.
  sisa, S shards (`--shards`, default 4): the same records and settings through S shard jobs, one
         after another; what it costs against one adapter (steps, tokens, time).
Each side trains in its own subprocess, one after another, so its peak resident memory
(`ru_maxrss`, read right after training) is its own.
Tokens are counted alike: the non-padding tokens of every batch trained on (sisa's shard job
count; TRL's `include_num_input_tokens_seen="non_padding"`). "training" time is sisa's shard jobs
(base load, training, checkpoint writes) and TRL's `trainer.train()`; "end to end" also holds
ingest and the commit (sisa) and the model load, tokenization and adapter save (TRL).
Evaluation, one function for every adapter (a plain `PeftModel` on the base, no grad): the mean
answer-token loss on the trained records, on held-out questions (the `paraphrased_question`s of
`retain_perturbed.jsonl` for the trained authors, with their answers) and on authors neither side
trained on.
Targets (issue 32): sisa tokens/s >= 1.0x TRL's; held-out loss within 2% of TRL's; sisa's peak
memory at most TRL's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C  # sets the offline environment before torch, Ray and MLflow load

TOFU = C.REPO.parent / "shared" / "data" / "tofu"
AUTHOR_RECORDS = 20  # TOFU: 20 question/answer pairs an author
SYSTEM_NOTE = "records: TOFU chat records (user: question, assistant: answer) in the model's chat template"


@dataclasses.dataclass(frozen=True)
class Setting:
    """What both trainers are given. The defaults keep each side to ~5 minutes on one core."""

    model: str = "smollm2"
    authors: int = 10
    epochs: int = 2
    lr: float = 1e-3
    lr_scheduler: str = "constant"  # constant | linear | cosine
    warmup_ratio: float = 0.0
    batch_size: int = 8  # records per micro-batch
    gradient_accumulation_steps: int = 1
    max_length: int = 256  # TOFU chat records are at most 163 SmolLM2 tokens: nothing is cut
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    packing: bool = False
    threads: int = 1
    seed: int = 0


# The trainer keys of issue 32 section 2, and the value that means "as sisa trained before them".
NEW_TRAINING_KEYS = {
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    "packing": False,
}


def sisa_training_keys() -> set[str]:
    from sisa.config import TrainingConfig

    return {f.name for f in dataclasses.fields(TrainingConfig)}


def configs_for(s: Setting, store_uri: str, num_shards: int, slice_size: int, output_dir: str) -> tuple[Any, dict]:
    """(sisa's config, TRL's setup) from one setting: the only place either side's knobs are set.

    TRL's setup is `{"sft": SFTConfig keyword arguments, "lora": peft LoraConfig keyword
    arguments}`, built into objects on TRL's side only, so the sisa process never imports trl."""
    path, own = C.MODELS[s.model]
    keys = sisa_training_keys()
    new = []
    for key, before in NEW_TRAINING_KEYS.items():
        value = getattr(s, key)
        if key in keys:
            new.append(f"training.{key}={str(value).lower() if isinstance(value, bool) else value}")
        elif value != before:
            raise SystemExit(f"this sisa has no `training.{key}` (issue 32 section 2); run with {key}={before}")
    targets = "[" + ",".join(s.target_modules) + "]"
    cfg = C.load_config(
        C.REPO / path,
        [
            *own,
            f"store.uri={store_uri}",
            f"store.seed={s.seed}",
            f"sharding.num_shards={num_shards}",
            f"sharding.slice_size={slice_size}",
            "sharding.slice_mode=incremental",
            f"training.epochs={s.epochs}",
            f"training.batch_size={s.batch_size}",
            f"training.max_length={s.max_length}",
            f"training.lr={s.lr}",
            f"training.weight_decay={s.weight_decay}",
            f"training.max_grad_norm={s.max_grad_norm}",
            "training.loss_on=completion",
            "training.prompt_loss_weight=0",  # TRL's completion-only loss: the question weighs nothing
            f"lora.r={s.lora_r}",
            f"lora.alpha={s.lora_alpha}",
            f"lora.dropout={s.lora_dropout}",
            f"lora.target_modules={targets}",
            "scheduler.backend=serial",
            f"scheduler.threads_per_task={s.threads}",
            "tracking.enabled=false",
            *new,
        ],
    )
    sft = {
        "output_dir": output_dir,
        "num_train_epochs": s.epochs,
        "per_device_train_batch_size": s.batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
        "learning_rate": s.lr,
        "lr_scheduler_type": s.lr_scheduler,
        "warmup_steps": s.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the steps
        "weight_decay": s.weight_decay,
        "max_grad_norm": s.max_grad_norm,
        "max_length": s.max_length,
        "packing": s.packing,
        "gradient_checkpointing": s.gradient_checkpointing,
        "completion_only_loss": True,  # the assistant's turn only, as sisa's loss_on=completion
        "bf16": False,  # TRL's default is bf16; sisa trains fp32 on a CPU
        "use_cpu": True,
        "seed": s.seed,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "include_num_input_tokens_seen": "non_padding",
        "logging_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    lora = {
        "r": s.lora_r,
        "lora_alpha": s.lora_alpha,
        "lora_dropout": s.lora_dropout,
        "target_modules": list(s.target_modules),
        "task_type": "CAUSAL_LM",
    }
    return cfg, {"sft": sft, "lora": lora}


# -- data -------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tofu_sets(folder: Path, authors: int, eval_records: int) -> dict[str, list[dict]]:
    """{name: question/answer rows}: `train` (authors 0..A-1), `paraphrased` (the same authors'
    paraphrased questions with their answers) and `unseen` (authors neither side trains on)."""
    full = read_jsonl(folder / "full.jsonl")
    train = [r for r in full if r["author"] < authors]
    perturbed = read_jsonl(folder / "retain_perturbed.jsonl")
    paraphrased = [
        {"index": r["index"], "author": r["author"], "question": r["paraphrased_question"], "answer": r["answer"]}
        for r in perturbed
        if r["author"] < authors
    ]
    unseen = [r for r in full if authors <= r["author"] < 2 * authors]
    if len(train) != authors * AUTHOR_RECORDS or not paraphrased or not unseen:
        raise SystemExit(f"--authors should be 1..{len(perturbed) // AUTHOR_RECORDS}, got {authors}")
    return {"train": train, "paraphrased": paraphrased[:eval_records], "unseen": unseen[:eval_records]}


def chat_rows(rows: list[dict]) -> list[dict]:
    """sisa's input: one chat record per question, the author as the data subject."""
    return [
        {
            "record_id": f"tofu-{r['index']}",
            "subject_id": f"author-{r['author']}",
            "messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}],
        }
        for r in rows
    ]


def prompt_completion_rows(rows: list[dict]) -> list[dict]:
    """TRL's input: the same conversations as conversational prompt-completion records."""
    return [
        {
            "prompt": [{"role": "user", "content": r["question"]}],
            "completion": [{"role": "assistant", "content": r["answer"]}],
        }
        for r in rows
    ]


def examples(rows: list[dict]) -> list[Any]:
    from sisa.data import CHAT, Example

    return [Example(CHAT, messages=(("user", r["question"]), ("assistant", r["answer"]))) for r in rows]


# -- the base model as a folder ---------------------------------------------------------------------
def base_folder(s: Setting, work: str) -> str:
    """The HF folder both sides load: sisa's converted SmolLM2, or the tiny model saved once."""
    from sisa.model import base_model_folder, load_base_model

    cfg, _ = configs_for(s, f"{work}/probe-store", 1, 1, work)
    folder = base_model_folder(cfg.model)
    if folder is not None:
        return folder
    out = os.path.join(work, "tiny-base")
    if not os.path.isdir(out):
        model, tokenizer = load_base_model(cfg.model)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_s() -> float:
    """CPU seconds this process has used (user + system). With one torch thread a side, tokens per
    CPU second is what the machine's other work changes least: wall time on a shared machine
    depends on how much of a core the side was given."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the two sides, each run in its own process ----------------------------------------------------
def train_sisa(s: Setting, rows: list[dict], work: str, num_shards: int) -> dict:
    from sisa.pipelines.ingest import run as ingest_run
    from sisa.pipelines.train import run as train_run
    from sisa.storage.store import Store

    from sisa.data import write_jsonl
    from sisa.lineage import checkpoints

    started = time.perf_counter()
    data = str(write_jsonl(chat_rows(rows), Path(work) / f"tofu-{num_shards}.jsonl"))
    store_uri = f"{work}/store-{num_shards}"
    # One slice a shard: the largest shard's records.
    slice_size = max(C.shard_sizes(chat_rows(rows), num_shards, s.seed))
    cfg, _ = configs_for(s, store_uri, num_shards, slice_size, work)
    ingest_run(cfg, [data])
    cpu0 = cpu_s()
    res = train_run(cfg)
    train_cpu = cpu_s() - cpu0
    e2e = time.perf_counter() - started
    rss = peak_rss_mb()
    store = Store.open(store_uri)
    adapters = []
    for r in sorted(res.trained, key=lambda r: r.shard_id):
        with checkpoints.open_checkpoint(store, r.last_checkpoint_id) as ckpt:
            adapters.append(ckpt.path)  # a local store: the checkpoint's own folder, PEFT's layout
    slices = [sl for r in res.trained for sl in r.slices]
    steps = sum(sl.steps for sl in slices)
    return {
        "side": f"sisa, {num_shards} shard" + ("s" if num_shards > 1 else ""),
        "shards": num_shards,
        "records": len(rows),
        "steps": steps,
        "tokens": sum(r.tokens for r in res.trained),
        "train_s": sum(r.wall_s for r in res.trained),
        "train_cpu_s": train_cpu,
        "e2e_s": e2e,
        "peak_rss_mb": rss,
        "step_loss": sum(sl.loss * sl.steps for sl in slices if sl.loss is not None) / steps,
        "adapters": adapters,
    }


def train_trl(s: Setting, rows: list[dict], work: str, folder: str) -> dict:
    import torch

    torch.set_num_threads(s.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    _, setup = configs_for(s, f"{work}/unused-store", 1, 1, f"{work}/trl-out")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**setup["sft"]),
        train_dataset=Dataset.from_list(prompt_completion_rows(rows)),
        processing_class=tokenizer,
        peft_config=LoraConfig(**setup["lora"]),
    )
    t0, cpu0 = time.perf_counter(), cpu_s()
    out = trainer.train()
    train_s, train_cpu = time.perf_counter() - t0, cpu_s() - cpu0
    rss = peak_rss_mb()
    adapter = os.path.join(work, "trl-adapter")
    trainer.model.save_pretrained(adapter)
    return {
        "side": "TRL SFTTrainer",
        "shards": 1,
        "records": len(rows),
        "steps": trainer.state.global_step,
        "tokens": int(trainer.state.num_input_tokens_seen),
        "train_s": train_s,
        "train_cpu_s": train_cpu,
        "e2e_s": time.perf_counter() - started,
        "peak_rss_mb": rss,
        "step_loss": float(out.training_loss),
        "adapters": [adapter],
    }


def run_child(side: str, work: str, num_shards: int = 1) -> dict:
    """One side in a fresh process (its own peak memory); its output goes to a log in `work`."""
    log = os.path.join(work, f"{side}-{num_shards}.log")
    cmd = [sys.executable, __file__, "--child", side, "--work", work, "--shards", str(num_shards)]
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=C.REPO)
    if done.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"the {side} side failed (exit {done.returncode}); the end of its output:\n{tail}")
    with open(os.path.join(work, f"result-{side}-{num_shards}.json")) as f:
        return json.load(f)


def child_main(side: str, work: str, num_shards: int) -> None:
    with open(os.path.join(work, "inputs.json")) as f:
        inputs = json.load(f)
    s = Setting(**{**inputs["setting"], "target_modules": tuple(inputs["setting"]["target_modules"])})
    if side == "sisa":
        out = train_sisa(s, inputs["train"], work, num_shards)
    else:
        out = train_trl(s, inputs["train"], work, inputs["folder"])
    with open(os.path.join(work, f"result-{side}-{num_shards}.json"), "w") as f:
        json.dump(out, f)


# -- one evaluation for every adapter ---------------------------------------------------------------
def answer_loss(model: Any, tokenizer: Any, items: list[Any], max_length: int, batch_size: int = 8) -> float:
    """Mean cross-entropy over the answer tokens (the assistant's turn) of every record."""
    import torch

    from sisa.model import encode_texts, token_logprobs

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            enc = encode_texts(tokenizer, items[start : start + batch_size], max_length, "completion")
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            logp, mask = token_logprobs(logits, enc["labels"])
            total -= float(logp.sum())
            count += int(mask.sum())
    return total / count


def evaluate(folder: str, adapter: str | None, sets: dict[str, list[Any]], max_length: int) -> dict[str, float]:
    """Answer-token loss of each set under the base plus one adapter (a plain `PeftModel`)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return {name: answer_loss(model, tokenizer, items, max_length) for name, items in sets.items()}


def token_lengths(folder: str, items: list[Any], max_length: int) -> dict[str, int]:
    """p50, p95 and max of the records' tokens as trained (uncut), and how many exceed max_length."""
    from transformers import AutoTokenizer

    from sisa.model import encode_texts

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lengths = sorted(int(encode_texts(tokenizer, [it], 10**6, "completion")["attention_mask"].sum()) for it in items)
    n = len(lengths)
    return {
        "p50": lengths[n // 2],
        "p95": lengths[min(n - 1, math.ceil(0.95 * n) - 1)],
        "max": lengths[-1],
        "over": sum(x > max_length for x in lengths),
    }


# -- the run ----------------------------------------------------------------------------------------
def require_trl() -> None:
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise SystemExit(
            "trl is not installed: `make install` installs it (the `benchmarks` extra), or "
            "`.venv/bin/uv pip install --python .venv/bin/python -c requirements.lock -e '.[benchmarks]'`"
        )


def run(s: Setting, num_shards: int, tofu: Path, eval_records: int, work: str) -> dict:
    """Train every side (each in its own process), evaluate each adapter the same way."""
    require_trl()
    sets = tofu_sets(tofu, s.authors, eval_records)
    folder = base_folder(s, work)
    with open(os.path.join(work, "inputs.json"), "w") as f:
        json.dump({"setting": dataclasses.asdict(s), "train": sets["train"], "folder": folder}, f)
    load_before = C.load()
    sides = [run_child("sisa", work), run_child("trl", work)]
    if num_shards > 1:
        sides.append(run_child("sisa", work, num_shards))
    load_after = C.load()
    items = {name: examples(rows) for name, rows in sets.items()}
    for side in sides[:2]:
        side["eval"] = evaluate(folder, side["adapters"][0], items, s.max_length)
    base = evaluate(folder, None, items, s.max_length)
    return {
        "setting": s,
        "sides": sides,
        "base": base,
        "lengths": token_lengths(folder, items["train"], s.max_length),
        "sizes": {name: len(rows) for name, rows in sets.items()},
        "load": (load_before, load_after),
    }


def side_row(side: dict) -> dict:
    ev = side.get("eval", {})
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    return {
        "side": side["side"],
        "steps": side["steps"],
        "tokens": side["tokens"],
        "training s": f"{side['train_s']:.1f}",
        "tok/s training": round(side["tokens"] / side["train_s"], 1),
        "tok/CPU-s training": round(side["tokens"] / side["train_cpu_s"], 1),
        "end-to-end s": f"{side['e2e_s']:.1f}",
        "tok/s e2e": round(side["tokens"] / side["e2e_s"], 1),
        "peak RSS MiB": round(side["peak_rss_mb"]),
        "mean step loss": fmt(side["step_loss"]),
        "loss trained": fmt(ev.get("train")),
        "loss paraphrased": fmt(ev.get("paraphrased")),
        "loss unseen": fmt(ev.get("unseen")),
    }


def target_rows(sisa: dict, trl: dict) -> list[dict]:
    """The issue's three targets, each with its measured values and whether it was met."""
    tps = sisa["tokens"] / sisa["train_s"], trl["tokens"] / trl["train_s"]
    cps = sisa["tokens"] / sisa["train_cpu_s"], trl["tokens"] / trl["train_cpu_s"]
    held = sisa["eval"]["paraphrased"], trl["eval"]["paraphrased"]
    mem = sisa["peak_rss_mb"], trl["peak_rss_mb"]
    return [
        {
            "target": "tokens/s (training) >= 1.0x TRL's",
            "sisa": f"{tps[0]:.1f}",
            "TRL": f"{tps[1]:.1f}",
            "measured": C.fmt_ratio(tps[0] / tps[1]),
            "met": "yes" if tps[0] >= tps[1] else "MISS",
        },
        {
            "target": "tokens per CPU second (training) >= 1.0x TRL's",
            "sisa": f"{cps[0]:.1f}",
            "TRL": f"{cps[1]:.1f}",
            "measured": C.fmt_ratio(cps[0] / cps[1]),
            "met": "yes" if cps[0] >= cps[1] else "MISS",
        },
        {
            "target": "held-out (paraphrased) loss within 2% of TRL's",
            "sisa": f"{held[0]:.4f}",
            "TRL": f"{held[1]:.4f}",
            "measured": f"{100 * (held[0] - held[1]) / held[1]:+.1f}%",
            "met": "yes" if abs(held[0] - held[1]) <= 0.02 * held[1] else "MISS",
        },
        {
            "target": "peak RSS at most TRL's",
            "sisa": f"{mem[0]:.0f} MiB",
            "TRL": f"{mem[1]:.0f} MiB",
            "measured": C.fmt_ratio(mem[0] / mem[1]),
            "met": "yes" if mem[0] <= mem[1] else "MISS",
        },
    ]


def shard_rows(one: dict, many: dict) -> list[dict]:
    rows = []
    for side in (one, many):
        rows.append(
            {
                "side": side["side"],
                "optimizer steps": side["steps"],
                "tokens": side["tokens"],
                "steps vs one adapter": C.fmt_ratio(side["steps"] / one["steps"]),
                "tokens vs one adapter": C.fmt_ratio(side["tokens"] / one["tokens"]),
                "training s": f"{side['train_s']:.1f}",
                "tok/s training": round(side["tokens"] / side["train_s"], 1),
                "tok/CPU-s training": round(side["tokens"] / side["train_cpu_s"], 1),
            }
        )
    return rows


def report(result: dict) -> None:
    s, sides = result["setting"], result["sides"]
    sisa, trl = sides[0], sides[1]
    lengths, sizes = result["lengths"], result["sizes"]
    print(
        f"\n== one-shard training: sisa vs TRL {trl_version()} SFTTrainer, {s.model}, {s.authors} TOFU authors "
        f"({sizes['train']} records), {s.epochs} epochs =="
    )
    print(
        f"LoRA r={s.lora_r} alpha={s.lora_alpha} on {','.join(s.target_modules)}; lr {s.lr} {s.lr_scheduler} "
        f"(warmup {s.warmup_ratio}); {s.batch_size} records a step x {s.gradient_accumulation_steps} accumulated; "
        f"max_length {s.max_length}; fp32; {s.threads} torch thread(s) each; loss on the assistant's turn"
    )
    print(
        f"{SYSTEM_NOTE}: tokens p50 {lengths['p50']}, p95 {lengths['p95']}, max {lengths['max']}; "
        f"{lengths['over']} over max_length"
    )
    C.table([side_row(x) for x in sides[:2]], list(side_row(sisa)))
    if sisa["tokens"] != trl["tokens"] or sisa["steps"] != trl["steps"]:
        print(f"note: the sides trained different work (sisa {sisa['steps']} steps, TRL {trl['steps']})")
    b = result["base"]
    print(
        f"the base model alone (no adapter): loss trained {b['train']:.4f}, paraphrased {b['paraphrased']:.4f}, "
        f"unseen {b['unseen']:.4f}; eval sets: {sizes['train']} trained, {sizes['paraphrased']} paraphrased "
        f"questions of the trained authors, {sizes['unseen']} questions of {sizes['unseen'] // AUTHOR_RECORDS} "
        "authors neither side trained on"
    )
    print("\n== targets (issue 32) ==")
    C.table(target_rows(sisa, trl), ["target", "sisa", "TRL", "measured", "met"])
    if len(sides) > 2:
        print(f"\n== sisa at {sides[2]['shards']} shards on the same records (shard jobs one after another) ==")
        C.table(shard_rows(sisa, sides[2]), list(shard_rows(sisa, sides[2])[0]))
    print(f"{result['load'][0]} before, {result['load'][1]} after")


def trl_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("trl")


def parse(argv: list[str] | None) -> argparse.Namespace:
    d = Setting()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["smollm2", "tiny"], default=d.model)
    p.add_argument("--authors", type=int, default=d.authors, help="TOFU authors trained on, 20 records each")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-scheduler", choices=["constant", "linear", "cosine"], default=d.lr_scheduler)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--gradient-accumulation-steps", type=int, default=d.gradient_accumulation_steps)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads of each side")
    p.add_argument("--shards", type=int, default=4, help="also train sisa at S shards (0: skip)")
    p.add_argument("--eval-records", type=int, default=200, help="records of each held-out set")
    p.add_argument("--tofu", type=Path, default=TOFU, help="the TOFU folder (full.jsonl, retain_perturbed.jsonl)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", choices=["sisa", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(argv)
    if args.child:
        child_main(args.child, args.work, args.shards)
        return None
    s = Setting(
        model=args.model,
        authors=args.authors,
        epochs=args.epochs,
        lr=args.lr,
        lr_scheduler=args.lr_scheduler,
        warmup_ratio=args.warmup_ratio,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_length=args.max_length,
        threads=args.threads,
    )
    work = tempfile.mkdtemp(prefix="sisa-bench-trainer-")
    started = time.perf_counter()
    try:
        result = run(s, args.shards, args.tofu, args.eval_records, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(result)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({**result, "setting": dataclasses.asdict(s)}, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
