"""Shared by the analysis tests: reading a run's results, and a tiny Llama config."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MLP_EDITS = [
    "dare:p=0.3",
    "dare:p=0.9",
    "dare:p=0.99",
    "dare:p=0.5,k=-1",
    "bitdelta",
    "bitdelta:magnitude_bits=4",
    "magnitude:keep=0.3",
    "lowrank:fraction=0.25",
    "expo:alpha=-0.2",
    "expo:alpha=0.2",
    "biased_product:k=1.5",
    "della:density=0.3,epsilon=0.1",
]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def numbers(res: dict) -> list:
    return [
        (r["spec"], r["estimates"], r["measured"], r["class"], r["accuracy"]) for p in res["pairs"] for r in p["edits"]
    ]


def llama(vocab: int) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
