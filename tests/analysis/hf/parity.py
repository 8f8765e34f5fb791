"""What the parity tests against transformers share: a tiny decoder configuration, the token ids
they run, how a fresh torch model is perturbed, and the LM-loss gradient comparison."""

import jax
import numpy as np
import pytest
import torch

TINY_DECODER = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
IDS = np.random.default_rng(0).integers(0, TINY_DECODER["vocab_size"], size=(2, 12)).astype(np.int32)


def randomize_(params, seed=1, scale=0.05):
    """Add seeded noise to every tensor in place: fresh models have zero biases and unit (or, for
    Gemma's ``1 + w``, zero) norms, and parity must be tested on every tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


def assert_lm_loss_and_gradients_match(hf, names, loss, grads, ids, mask):
    """Our masked next-token loss and its gradient of every tensor (``names`` in the order of
    ``jax.tree.leaves(grads)``) against torch autograd on ``hf``: loss within 1e-5 relative,
    gradients within atol 2e-5, rtol 1e-4."""
    hf.zero_grad()
    t_ids = torch.tensor(ids, dtype=torch.long)
    logits = hf(t_ids).logits[:, :-1]
    tm = torch.tensor(mask)[:, 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), t_ids[:, 1:].reshape(-1), reduction="none"
    )
    ref_loss = (nll * tm).sum() / tm.sum()
    ref_loss.backward()
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    named = dict(hf.named_parameters())
    flat = dict(zip(names, jax.tree.leaves(grads)))
    assert set(flat) == set(named)
    for n, g in flat.items():
        np.testing.assert_allclose(np.asarray(g), named[n].grad.numpy(), atol=2e-5, rtol=1e-4, err_msg=n)
