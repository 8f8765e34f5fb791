"""Offline text and tasks for the built-in language pairs, and their byte-level tokenizer.

Pre-training text: the source files of a fixed list of CPython standard-library modules, read
from the running interpreter's ``stdlib`` directory (Python Software Foundation License; the
files ship with every CPython install). The text is therefore identical for a given Python
version; its SHA-256 and the Python version are recorded with every build.

Post-training tasks (synthetic, seeded; exact-match accuracy by greedy decoding):

- ``arithmetic``: ``"47+38="`` → ``"85"`` (two numbers of one or two digits);
- ``strings``: ``"rev:lamp="`` → ``"pmal"`` (reverse a lowercase word of 4 to 8 letters).

Preferences for DPO (``arithmetic``): chosen = the correct sum, rejected = the sum off by a
nonzero amount in −3…3 (the full size; the mini size, whose model cannot add, by +100, +200, +300).
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

import numpy as np

STDLIB_MODULES = (
    "textwrap.py",
    "string.py",
    "fractions.py",
    "heapq.py",
    "bisect.py",
    "colorsys.py",
    "shlex.py",
    "difflib.py",
    "fnmatch.py",
    "glob.py",
    "queue.py",
    "calendar.py",
    "statistics.py",
    "random.py",
    "copy.py",
    "functools.py",
    "contextlib.py",
    "dataclasses.py",
    "enum.py",
    "json/decoder.py",
    "json/encoder.py",
    "csv.py",
    "base64.py",
    "argparse.py",
    "pprint.py",
    "numbers.py",
    "operator.py",
    "graphlib.py",
    "html/__init__.py",
    "ipaddress.py",
)
SPECIALS = ("<pad>", "<s>", "</s>")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def stdlib_corpus(max_chars: int) -> tuple[str, dict[str, str]]:
    """Concatenated stdlib sources (in the order of ``STDLIB_MODULES``), cut at ``max_chars``,
    and a record of exactly what was used."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, used = [], []
    for rel in STDLIB_MODULES:
        f = root / rel
        if f.is_file():
            parts.append(f.read_text(encoding="utf-8", errors="replace"))
            used.append(rel)
    text = "\n".join(parts)[:max_chars]
    if len(text) < 10_000:
        raise RuntimeError(f"the standard library at {root} gave only {len(text)} characters of text")
    info = {
        "source": f"CPython {sys.version.split()[0]} standard library at {root}",
        "licence": "Python Software Foundation License",
        "files": ",".join(used),
        "chars": str(len(text)),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    return text, info


def byte_tokenizer() -> object:
    """A byte-level BPE tokenizer without merges: one token per byte (256) plus ``<pad>``,
    ``<s>``, ``</s>``; ``<s>`` is prepended to every encoding. Written as ``tokenizer.json``,
    so the language pairs load exactly like any Hugging Face checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: i + len(SPECIALS) for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok.add_special_tokens(list(SPECIALS))
    return tok


def arithmetic(rng: np.random.Generator, n: int) -> list[dict[str, str]]:
    a = rng.integers(0, 100, n)
    b = rng.integers(0, 100, n)
    return [{"prompt": f"{x}+{y}=", "response": str(x + y)} for x, y in zip(a.tolist(), b.tolist())]


def strings(rng: np.random.Generator, n: int) -> list[dict[str, str]]:
    out = []
    for _ in range(n):
        k = int(rng.integers(4, 9))
        word = "".join(LETTERS[i] for i in rng.integers(0, 26, k))
        out.append({"prompt": f"rev:{word}=", "response": word[::-1]})
    return out


def preferences(
    rng: np.random.Generator, n: int, offsets: tuple[int, ...] = (-3, -2, -1, 1, 2, 3)
) -> list[dict[str, str]]:
    out = []
    for rec in arithmetic(rng, n):
        right = int(rec["response"])
        off = int(rng.choice(list(offsets)))
        wrong = right + off if right + off >= 0 else right - off  # never negative, never right
        out.append({"prompt": rec["prompt"], "chosen": rec["response"], "rejected": str(wrong)})
    return out


TASKS = {"arithmetic": arithmetic, "strings": strings}
