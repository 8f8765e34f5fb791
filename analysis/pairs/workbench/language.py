"""Built-in language pairs: a small Llama-architecture decoder pre-trained on CPython standard-
library sources, post-trained on two skills, and DPO-trained on one of them.

Every model goes through the same module and checkpoint code as Hugging Face models: it is saved
in HF layout with its ``tokenizer.json`` and loaded back with ``analysis.hf.checkpoints.load``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from analysis.hf import checkpoints
from analysis.pairs import accuracy, data
from analysis.pairs.workbench import corpus
from analysis.pairs.workbench.train import train

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LanguageConfig:
    hidden_size: int = 96
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    window: int = 96  # pre-training sequence length
    task_len: int = 24  # padded length of task examples
    corpus_chars: int = 400_000
    pre_steps: int = 600
    post_steps: int = 2400  # converged (exact match ~99-100 %), not mid-transition: robust to seeds and CPUs
    dpo_steps: int = 300
    batch_size: int = 32
    pre_lr: float = 3e-3
    post_lr: float = 2e-3
    dpo_lr: float = 2e-4
    dpo_beta: float = 0.1
    dpo_offsets: tuple[int, ...] = (-3, -2, -1, 1, 2, 3)  # rejected = the right sum + one of these
    train_examples: int = 6000
    eval_examples: int = 384  # 12 batches of eval_batch, each from one length bucket
    eval_batch: int = 32
    seed: int = 0  # the task data (training and held-out records)
    train_seed: int = 0  # initialisation and the order of training batches


MINI = LanguageConfig(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=64,
    window=48,
    corpus_chars=60_000,
    pre_steps=60,
    post_steps=250,
    dpo_steps=60,
    batch_size=16,
    train_examples=600,
    eval_examples=96,
    eval_batch=8,
    dpo_lr=5e-4,
    dpo_offsets=(100, 200, 300),  # the mini model cannot add: a wrong hundreds digit it learns to tell apart
)
TASK_NEW_TOKENS = {"arithmetic": 4, "strings": 9}


def raw_config(cfg: LanguageConfig, vocab: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "dtype": "float32",
    }


def _arrays(items: list[dict[str, Any]], length: int, prefix: str = "") -> dict[str, np.ndarray]:
    ids = np.zeros((len(items), length), np.int32)
    mask = np.zeros((len(items), length), np.float32)
    for i, it in enumerate(items):
        n = min(length, len(it[f"{prefix}ids"]))
        ids[i, :n] = it[f"{prefix}ids"][:n]
        mask[i, :n] = it[f"{prefix}mask"][:n]
    return {f"{prefix}input_ids": ids, f"{prefix}loss_mask": mask}


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def task_records(task: str, cfg: LanguageConfig) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Training and held-out records from separate seeded streams; held-out prompts that also
    occur in training are dropped, so evaluation never sees a post-training example."""
    offset = {"arithmetic": 1, "strings": 2}[task]
    train_recs = corpus.TASKS[task](np.random.default_rng([cfg.seed, offset, 0]), cfg.train_examples)
    seen = {r["prompt"] for r in train_recs}
    held = [
        r
        for r in corpus.TASKS[task](np.random.default_rng([cfg.seed, offset, 1]), 4 * cfg.eval_examples)
        if r["prompt"] not in seen
    ]
    return train_recs, _whole_batches(held, cfg.eval_examples, cfg.eval_batch, cfg.task_len)


def _whole_batches(records: list[dict[str, str]], n: int, batch: int, max_len: int) -> list[dict[str, str]]:
    """``n`` of ``records`` (in their order) such that each length bucket of ``data.make_batches``
    holds whole batches of ``batch``: ``n / batch`` evaluation batches, none padded. Each bucket
    keeps its share of the first ``n`` records rounded down to whole batches; the most common
    bucket takes the rest."""
    if n % batch:
        raise ValueError(f"eval_examples={n} is not a multiple of eval_batch={batch}")

    def bucket(r: dict[str, str]) -> int:  # byte tokens: <s>, prompt, response, </s>
        return data._bucket(len(r["prompt"].encode()) + len(r["response"].encode()) + 2, max_len)

    counts: dict[int, int] = {}
    for r in records[:n]:
        counts[bucket(r)] = counts.get(bucket(r), 0) + 1
    keep = {b: c - c % batch for b, c in counts.items()}
    keep[max(counts, key=counts.__getitem__)] += n - sum(keep.values())
    out = []
    for r in records:
        if keep.get(bucket(r), 0) > 0:
            keep[bucket(r)] -= 1
            out.append(r)
    if len(out) != n:
        raise RuntimeError(f"only {len(out)} held-out records fill whole batches; {n} wanted")
    return out


def build_stage(
    stage: str, cfg: LanguageConfig, out: Path, done: Callable[[str], Path], progress: bool
) -> dict[str, Any]:
    """Build one stage into ``out`` (a fresh directory): ``pre``, ``arithmetic``, ``strings`` or
    ``arithmetic-dpo``; ``done(stage)`` gives the directory of an earlier completed stage."""
    tok = corpus.byte_tokenizer()
    vocab = tok.get_vocab_size()
    eos = tok.token_to_id("</s>")
    raw = raw_config(cfg, vocab)
    if stage == "pre":
        text, info = corpus.stdlib_corpus(cfg.corpus_chars)
        ids = np.asarray(tok.encode(text).ids[1:], np.int32)  # drop the single leading <s>
        stride = cfg.window // 2
        starts = np.arange(0, len(ids) - cfg.window, stride)
        windows = np.stack([np.concatenate([[1], ids[s : s + cfg.window - 1]]) for s in starts]).astype(np.int32)
        mask = np.ones_like(windows, np.float32)
        mask[:, 0] = 0
        model = checkpoints.from_config(raw, seed=cfg.train_seed)
        loss = data.causal_lm_loss(model.forward)
        split = int(0.95 * len(windows))  # last 5 % of the text: held-out pre-training loss
        params, curve = train(
            loss,
            model.params,
            {"input_ids": windows[:split], "loss_mask": mask[:split]},
            steps=cfg.pre_steps,
            batch_size=cfg.batch_size,
            lr=cfg.pre_lr,
            seed=cfg.train_seed,
            desc="lm pre-training",
            progress=progress,
        )
        held = {"input_ids": windows[split:][:64], "loss_mask": mask[split:][:64]}
        checkpoints.save(out, model, params)
        tok.save(str(out / "tokenizer.json"))
        return {
            "corpus": info,
            "curve": curve[::10],
            "final_train_loss": float(np.mean(curve[-20:])),
            "heldout_loss": float(loss(params, held)),
            "windows": int(len(windows)),
        }
    pre = checkpoints.load(done("pre"))
    if stage in corpus.TASKS:
        train_recs, held = task_records(stage, cfg)
        items = data.tokenize(tok, "response", train_recs, max_len=cfg.task_len, eos_id=eos)
        loss = data.causal_lm_loss(pre.forward)
        params, curve = train(
            loss,
            pre.params,
            _arrays(items, max(len(it["ids"]) for it in items)),  # the task's longest example: no wasted columns
            steps=cfg.post_steps,
            batch_size=cfg.batch_size,
            lr=cfg.post_lr,
            seed=cfg.train_seed + 1,
            desc=f"lm post-training: {stage}",
            progress=progress,
        )
        checkpoints.save(out, pre, params)
        _write_jsonl(out / "eval.jsonl", held)
        eval_batches = data.make_batches(
            data.tokenize(tok, "response", held, max_len=cfg.task_len, eos_id=eos),
            batch_size=cfg.eval_batch,
            max_len=cfg.task_len,
        )
        return {
            "task": stage,
            "curve": curve[::10],
            "final_train_loss": float(np.mean(curve[-20:])),
            "loss_pre": float(np.mean([loss(pre.params, b) for b in eval_batches])),
            "loss_post": float(np.mean([loss(params, b) for b in eval_batches])),
            "accuracy_pre": accuracy.exact_match(pre.forward, pre.params, tok, held, max_new=TASK_NEW_TOKENS[stage]),
            "accuracy_post": accuracy.exact_match(pre.forward, params, tok, held, max_new=TASK_NEW_TOKENS[stage]),
            "train_examples": len(train_recs),
            "eval_examples": len(held),
        }
    if stage == "arithmetic-dpo":
        sft = checkpoints.load(done("arithmetic"))
        rng_train = np.random.default_rng([cfg.seed, 3, 0])
        prefs = corpus.preferences(rng_train, cfg.train_examples // 2, cfg.dpo_offsets)
        held = corpus.preferences(np.random.default_rng([cfg.seed, 3, 1]), cfg.eval_examples, cfg.dpo_offsets)
        items = data.tokenize(tok, "preference", prefs, max_len=cfg.task_len, eos_id=eos)
        width = max(len(it[f"{side}_ids"]) for it in items for side in ("chosen", "rejected"))
        arrays = {**_arrays(items, width, "chosen_"), **_arrays(items, width, "rejected_")}
        ref = jax.jit(lambda p, i, m: data.sequence_logprob(sft.forward, p, i, m))
        arrays["ref_chosen"] = np.asarray(ref(sft.params, arrays["chosen_input_ids"], arrays["chosen_loss_mask"]))
        arrays["ref_rejected"] = np.asarray(ref(sft.params, arrays["rejected_input_ids"], arrays["rejected_loss_mask"]))
        arrays["valid"] = np.ones(len(items), np.float32)
        loss = data.dpo_loss(sft.forward, beta=cfg.dpo_beta)
        params, curve = train(
            loss,
            sft.params,
            arrays,
            steps=cfg.dpo_steps,
            batch_size=cfg.batch_size,
            lr=cfg.dpo_lr,
            seed=cfg.train_seed + 2,
            desc="lm DPO: arithmetic",
            progress=progress,
        )
        checkpoints.save(out, sft, params)
        _write_jsonl(out / "eval.jsonl", held)
        held_batches = data.dpo_batches(
            data.make_batches(
                data.tokenize(tok, "preference", held, max_len=cfg.task_len, eos_id=eos),
                batch_size=cfg.eval_batch,
                max_len=cfg.task_len,
            ),
            sft.forward,
            sft.params,
        )
        arith_held = task_records("arithmetic", cfg)[1]
        reward, new_tokens = accuracy.reward_accuracy_fn(sft.forward), TASK_NEW_TOKENS["arithmetic"]
        return {
            "task": "arithmetic preferences (DPO, reference = the arithmetic SFT model)",
            "curve": curve[::5],
            "loss_pre": float(np.mean([loss(sft.params, b) for b in held_batches])),
            "loss_post": float(np.mean([loss(params, b) for b in held_batches])),
            "accuracy": "implicit-reward accuracy on held-out pairs (the reference scores 0.5)",
            "accuracy_pre": reward(sft.params, held_batches),
            "accuracy_post": reward(params, held_batches),
            "exact_match_pre": accuracy.exact_match(sft.forward, sft.params, tok, arith_held, max_new=new_tokens),
            "exact_match_post": accuracy.exact_match(sft.forward, params, tok, arith_held, max_new=new_tokens),
            "beta": cfg.dpo_beta,
        }
    raise ValueError(f"unknown language stage {stage!r}")
