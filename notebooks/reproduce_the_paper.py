# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reproducing the paper's experiments on the workbench
#
# Tang et al. (2024) ran their analysis on LLaMA-3-8B, Mistral-7B and Qwen2-7B (GSM8K), on
# CLIP ViT-B/32 task vectors and on Zephyr-7B (DPO). The workbench mirrors those settings at a
# size two CPU cores can train: a Llama-architecture decoder post-trained on arithmetic (SFT) and
# with DPO, and a CLIP-ViT encoder fine-tuned on three digit tasks. Each experiment below
# recomputes one figure or table: the paper's approximation term (left rule, C = 5), the
# first-order term, the measured loss change and the task accuracy — and puts the paper's claim
# next to what we measure. `riemann reproduce all` does the same from the command line.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from analysis.jobs import reproduce
from analysis.pairs import workbench
from analysis.reporting import paper_figures

SMOKE = os.environ.get("RIEMANN_SMOKE") == "1"
SIZE = "mini" if SMOKE else "full"
OUT = Path(tempfile.mkdtemp(prefix="reproduce-"))
pairs = {}


def load(name):
    if name not in pairs:
        pairs[name] = workbench.load_pair(name, SIZE, progress=False, log=lambda s: None)
    return pairs[name]


def show(name):
    rec = reproduce.run_experiment(name, load, OUT, progress=False, log=lambda s: None)
    display(Markdown(f"### {rec['title']}\n\n**Paper:** {rec['paper_claim']}\n\n**Ours:** {rec['ours']}"))
    fig = paper_figures.FIGURES[name](rec)
    plt.show()
    plt.close(fig)
    return rec


# %% [markdown]
# ## Fig. 1 and 2 — the DARE extension over p and k
# Dropped entries are multiplied by `k` (DARE: `k = 0`), kept ones by `(1 − kp)/(1 − p)`, so the
# expected change is zero for every `p` and `k`.

# %%
fig1 = show("fig1")

# %%
fig2 = show("fig2")

# %% [markdown]
# ## Table 1 — random vs biased rescaling
# "Biased ΔW" splits the entries by the sign of ΔW, "Biased ΔW·∇L" by the sign of the product with
# the gradient at W_post; the first-order term of the latter is negative by construction.

# %%
table1 = show("table1")

# %% [markdown]
# ## Fig. 3 — the term per module

# %%
fig3 = show("fig3")

# %% [markdown]
# ## Fig. 4 and 5 — BitDelta: more magnitude bits, other magnitudes

# %%
fig4 = show("fig4")

# %%
fig5 = show("fig5")

# %% [markdown]
# ## Fig. 6 and 7 — EXPO: extrapolation and interpolation

# %%
fig6 = show("fig6")

# %%
fig7 = show("fig7")

# %% [markdown]
# Every record (`fig1` … `fig7`, `table1`) is a plain dict with one entry per edit: its spec, the
# estimates, the measured change, its class and accuracy, and the per-module terms — the JSON that
# `riemann reproduce` writes.

# %%
print(sorted(fig4["pairs"][0]["edits"][0]))
print(f"files in {OUT}: {sorted(p.name for p in OUT.iterdir())}")
