import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

import riemann
from analysis.hf import checkpoints
from analysis.pairs import data

CORPUS = [
    "the cat sat on the mat",
    "two plus two is four",
    "question : what is three plus one ? answer : four",
    "a dog ran in the park",
    "good answer",
    "bad answer",
]
LLAMA = {
    "model_type": "llama",
    "vocab_size": 40,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def make_tokenizer(path):
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "<s>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tok.save(str(path / "tokenizer.json"))
    return tok


@pytest.fixture
def ck_dir(tmp_path):
    out = checkpoints.save(tmp_path / "ck", checkpoints.from_config(LLAMA, seed=0))
    make_tokenizer(out)
    return out


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_text_records_score_every_token_after_the_first(ck_dir, tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in CORPUS[:4]])
    kind, batches = data.jsonl_batches(f, ck_dir, batch_size=3)
    assert kind == "text"
    assert all(b["input_ids"].shape[1] == 16 for b in batches)  # one bucket
    assert sum(int(b["loss_mask"].sum()) for b in batches) == sum(len(t.split()) for t in CORPUS[:4])  # BOS + words − 1
    assert batches[-1]["loss_mask"][1:].sum() == 0  # padding rows score nothing


def test_response_loss_counts_response_tokens_only(ck_dir, tmp_path):
    f = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "what is three plus one ?", "response": "four"}, {"prompt": "two plus two", "response": "is four"}],
    )
    kind, batches = data.jsonl_batches(f, ck_dir, batch_size=2)
    assert kind == "response"
    b = batches[0]
    assert b["loss_mask"].sum() == 3
    ck = checkpoints.load(ck_dir)
    loss_fn = data.causal_lm_loss(ck.forward)
    logits = ck.forward(ck.params, jnp.asarray(b["input_ids"]))
    lp = jax.nn.log_softmax(logits, -1)
    ids = b["input_ids"]
    manual = [-float(lp[i, t - 1, ids[i, t]]) for i in range(2) for t in range(ids.shape[1]) if b["loss_mask"][i, t]]
    assert float(loss_fn(ck.params, b)) == pytest.approx(np.mean(manual), rel=1e-5)


def test_dpo_loss_is_log_two_at_the_reference_and_plugs_into_the_engine(ck_dir, tmp_path):
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "question : what is two plus two ?", "chosen": "good answer four", "rejected": "bad answer"}] * 3,
    )
    kind, raw = data.jsonl_batches(f, ck_dir, batch_size=2)
    assert kind == "preference"
    ck = checkpoints.load(ck_dir)
    batches = data.dpo_batches(raw, ck.forward, ck.params)
    loss_fn = data.dpo_loss(ck.forward, beta=0.1)
    assert float(loss_fn(ck.params, batches[0])) == pytest.approx(np.log(2.0), rel=1e-6)
    leaves, treedef = jax.tree.flatten(ck.params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    direction = jax.tree.unflatten(treedef, [0.03 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    res = riemann.integrate_path(loss_fn, ck.params, direction, batches, rule="gauss-legendre", n=8, endpoints=True)
    assert abs(res.loss_end - res.loss_start) > 1e-4
    assert res.relative_gap < 1e-3


@pytest.mark.parametrize(
    "lines,match",
    [
        (['{"text": "a"}', '{"txt": "b"}'], r"d.jsonl:2: missing or non-string field\(s\) \['text'\]"),
        (['{"prompt": "a"}'], r"d.jsonl:1: a record needs 'text'"),
        (["not json"], r"d.jsonl:1: not valid JSON"),
        (['{"prompt": "a", "response": 3}'], r"d.jsonl:1: missing or non-string field\(s\) \['response'\]"),
        ([""], "no records"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, lines, match):
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(data.DataError, match=match):
        data.read_jsonl(tmp_path / "d.jsonl")


def test_record_without_scored_tokens_and_missing_tokenizer(ck_dir, tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "two plus two", "response": ""}])
    with pytest.raises(data.DataError, match="record 1 yields no scored tokens"):
        data.jsonl_batches(f, ck_dir)
    with pytest.raises(data.DataError, match="tokenizer.json not found"):
        data.jsonl_batches(f, tmp_path)


def test_image_batches_and_loss_shapes():
    imgs = np.zeros((10, 3, 8, 8), np.float32)
    batches = list(data.image_batches(imgs, np.arange(10) % 3, batch_size=4))
    assert len(batches) == 2 and batches[0]["pixel_values"].shape == (4, 3, 8, 8)
    with pytest.raises(data.DataError, match=r"\[N, C, H, W\]"):
        list(data.image_batches(np.zeros((4, 8, 8)), np.zeros(4), batch_size=2))
