"""The shared fine-tuning loop (LoRA via PEFT and full fine-tuning), generation/accuracy helpers, and
the paper-profile HF path (a tiny Llama and a JSONL dataset, offline)."""

from __future__ import annotations

import json
import math
import os

# Must be set before `datasets` is imported anywhere in this process: no test may touch the network.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from lmrepro.data import to_hf_tokenizer, train_bpe_tokenizer  # noqa: E402
from lmrepro.data.reasoning import IGNORE_INDEX, encode_sft, exact_match, make_reasoning_split  # noqa: E402
from lmrepro.lora.finetune import (  # noqa: E402
    dataset_batches,
    finetune,
    generate_answers,
    make_lr_schedule,
    reasoning_accuracy,
    sft_loss,
)
from lmrepro.lora.hf_models import hf_sft_dataset, load_causal_lm  # noqa: E402
from lmrepro.models import DecoderLM, LMSpec  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread


@pytest.fixture(scope="module")
def task():
    """(train examples, tokenizer, encoded train set): 8 one-step problems a tiny model can memorize."""
    train, _ = make_reasoning_split(8, 0, seed=0, steps=(1,), max_operand=9)
    tok = train_bpe_tokenizer([e.prompt + e.target for e in train] * 5, vocab_size=300)
    return train, tok, encode_sft(train, tok, max_len=64)


def tiny_lm(vocab_size: int, seed: int = 0, hidden: int = 32) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(LMSpec(vocab_size=vocab_size, hidden_size=hidden, num_layers=2, num_heads=2, num_kv_heads=2,
                            intermediate_size=2 * hidden, max_seq_len=64))


@pytest.fixture(scope="module")
def pretrained(task):
    """State of a tiny LM fully trained on *other* problems of the task: the base LoRA adapts.

    (LoRA on a random base barely moves the loss: the frozen lm_head of a fresh init caps the logits.)
    """
    _, tok, _ = task
    _, other = make_reasoning_split(8, 32, seed=0, steps=(1,), max_operand=9)
    model = tiny_lm(tok.get_vocab_size())
    finetune(model, adamw(1e-2), encode_sft(other, tok, max_len=64), steps=40, batch_size=8)
    return model.state_dict()


def base_lm(task, pretrained):
    model = tiny_lm(task[1].get_vocab_size())
    model.load_state_dict(pretrained)
    return model


def base_weight(names, name):
    """The PEFT-wrapped name of base parameter ``name`` (adapted layers keep it in ``base_layer``)."""
    key = f"base_model.model.{name}"
    return names[key] if key in names else names[key.removesuffix(".weight") + ".base_layer.weight"]


def lora(model, r=4, alpha=8, dropout=0.0):
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGETS))


def adamw(lr):
    return lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def fixed(batch):
    return lambda step: batch


# -- loss convention ------------------------------------------------------------------------------

def reference_loss(logits, labels):
    """Hand-written shifted CE: position t predicts labels[t+1]; -100 is skipped; mean over counted tokens."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE_INDEX:
                continue
            row = logits[b, t].double()
            total += float(torch.logsumexp(row, 0) - row[y])
            count += 1
    return total / count, count


@pytest.mark.parametrize("batch, length", [(1, 2), (3, 7), (2, 13)])
def test_sft_loss_equals_hand_computed_shifted_ce(batch, length):
    model = tiny_lm(50)
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, 50, (batch, length), generator=g)
    labels = ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX  # a prompt
    labels[0, -1] = IGNORE_INDEX  # padding at the end of one row
    if labels[:, 1:].ne(IGNORE_INDEX).sum() == 0:
        labels[:, -1] = ids[:, -1]
    loss, count = sft_loss(model, {"input_ids": ids, "labels": labels})
    with torch.no_grad():
        expected, expected_count = reference_loss(model(ids), labels)
    assert count == expected_count
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_sft_loss_rejects_unsupervised_and_misshaped_batches():
    model = tiny_lm(50)
    ids = torch.zeros(2, 5, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 0] = 3  # position 0 is never a target: nothing to predict
    with pytest.raises(ValueError, match="no supervised token"):
        sft_loss(model, {"input_ids": ids, "labels": labels})
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        sft_loss(model, {"input_ids": ids, "labels": labels[:, :4]})


# -- LoRA vs full fine-tuning ----------------------------------------------------------------------

def test_lora_lowers_loss_and_leaves_base_weights_untouched(task, pretrained):
    _, tok, data = task
    base = base_lm(task, pretrained)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = lora(base, r=8, alpha=16)
    batch = {k: v[:4] for k, v in data.items()}
    result = finetune(model, adamw(1e-2), fixed(batch), steps=25, grad_clip=1.0)
    losses = [r["loss"] for r in result.rows]
    # (~1.2 → ~0.65 here; a rank-8 adapter on a 32-wide model plateaus near 0.6 on this batch.)
    assert len(losses) == 25 and losses[-1] < 0.7 * losses[0]
    names = dict(model.named_parameters())
    for name, old in before.items():
        assert torch.equal(base_weight(names, name), old), name
    lora_b = [p for n, p in names.items() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B started at zero and has moved


def test_full_finetuning_changes_the_weights(task):
    _, tok, data = task
    model = tiny_lm(tok.get_vocab_size())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {k: v[:4] for k, v in data.items()}
    result = finetune(model, adamw(3e-3), fixed(batch), steps=15)
    assert result.rows[-1]["loss"] < result.rows[0]["loss"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"layers.0.mixer.q_proj.weight", "layers.1.mlp.down_proj.weight", "lm_head.weight"} <= changed


# -- determinism, schedule, accumulation, hooks ----------------------------------------------------

def run_lora(data, seed, steps=6, noise=0, **kw):
    model = lora(tiny_lm(300, seed=0), dropout=0.1)  # dropout: the loop's seed must cover it
    torch.rand(noise)  # other code drawing from the global RNG before the run must not matter
    return finetune(model, adamw(5e-3), data, steps=steps, batch_size=3, seed=seed, **kw)


def test_same_seed_gives_identical_rows(task):
    _, _, data = task
    a, b = run_lora(data, seed=1), run_lora(data, seed=1, noise=13)
    assert a.rows == b.rows and len(a.rows) == 6
    assert run_lora(data, seed=2).rows != a.rows


def test_dataset_batches_cover_each_epoch_once(task):
    _, _, data = task
    n = data["input_ids"].shape[0]
    sample = dataset_batches(data, batch_size=3, seed=0)
    rows = torch.cat([sample(s)["input_ids"] for s in range(n)])  # 3 full epochs of 8 rows
    for epoch in range(3):
        got = sorted(map(tuple, rows[epoch * n:(epoch + 1) * n].tolist()))
        assert got == sorted(map(tuple, data["input_ids"].tolist()))
    assert torch.equal(sample(2)["labels"], dataset_batches(data, 3, 0)(2)["labels"])


def test_rows_follow_the_lr_schedule(task):
    _, _, data = task
    sched = make_lr_schedule(10, warmup_fraction=0.2, min_lr_ratio=0.1)
    result = run_lora(data, seed=0, steps=10, lr_schedule=sched)
    lrs = [r["lr"] for r in result.rows]
    assert lrs == pytest.approx([5e-3 * sched(s) for s in range(10)])
    assert lrs[0] == pytest.approx(2.5e-3) and lrs[1] == pytest.approx(5e-3) and lrs[-1] == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="schedule"):
        make_lr_schedule(10, schedule="linear")


def test_micro_batches_accumulate_the_token_mean(task):
    _, tok, data = task
    # Rows with very different numbers of supervised tokens: a per-micro-batch mean would differ.
    batch = {k: v[:4].clone() for k, v in data.items()}
    batch["labels"][0, : int(batch["lengths"][0]) - 2] = IGNORE_INDEX
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=1.0)  # noqa: E731  (update = gradient, unscaled)
    runs = []
    for micro in (None, 1, 3):
        model = tiny_lm(tok.get_vocab_size())
        result = finetune(model, sgd, fixed(batch), steps=1, grad_clip=None, micro_batch_size=micro)
        runs.append((result.rows[0], model.state_dict()))
    (row, state), others = runs[0], runs[1:]
    for other_row, other_state in others:
        assert other_row["tokens"] == row["tokens"]
        assert other_row["loss"] == pytest.approx(row["loss"], rel=1e-6)
        assert other_row["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-5)
        for k in state:
            torch.testing.assert_close(other_state[k], state[k], rtol=1e-5, atol=1e-6)


class Recorder:
    """Checks the hook contract: gradients exist and parameters are unchanged at before_step."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def lora_b(self):
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_B" in n}

    def before_step(self):
        self.snapshot = self.lora_b()
        assert all(p.grad is not None for n, p in self.model.named_parameters() if "lora_" in n)
        self.calls.append("before")

    def after_step(self):
        self.calls.append("after")
        moved = sum(float((p - self.snapshot[n]).norm()) for n, p in self.lora_b().items())
        return {"b_update_norm": moved, "nested": {"a": 1, "b": {"c": 2}}}


def test_callbacks_and_periodic_eval(task):
    _, _, data = task
    evals = []

    def eval_fn(model):
        assert not model.training
        evals.append(1)
        return {"eval_metric": float(len(evals))}

    model = lora(tiny_lm(300, seed=0))
    rec = Recorder(model)
    result = finetune(model, adamw(5e-3), data, steps=7, batch_size=3, callbacks=[rec], eval_fn=eval_fn,
                      eval_every=3, log_every=5)
    assert rec.calls == ["before", "after"] * 7
    assert [r["step"] for r in result.rows] == [3, 5, 6, 7]  # eval steps, every 5th, and the last
    assert [r.get("eval_metric") for r in result.rows] == [1.0, None, 2.0, 3.0]
    assert result.final_eval == {"eval_metric": 3.0} and len(evals) == 3
    assert all(r["b_update_norm"] > 0 and r["nested/a"] == 1 and r["nested/b/c"] == 2 for r in result.rows)


def test_signal_drift_probe_plugs_in(task):
    """Integration with the reconstruction of claim 3: the probe's hooks match the loop's protocol."""
    signal_drift = pytest.importorskip("lmrepro.lora.signal_drift")
    _, _, data = task
    model = lora(tiny_lm(300, seed=0))
    probe = signal_drift.SignalDrift(model)
    result = finetune(model, adamw(5e-3), data, steps=3, batch_size=3, callbacks=[probe])
    keys = [k for k in result.rows[-1] if k.endswith("/ratio")]
    assert len(keys) == 2 * len(TARGETS)  # one per adapted layer
    # Step 1 starts from B = 0, so S = s·δB·A and D = s·δB·δA; the signal must be non-zero from step 2 on.
    assert all(result.rows[-1][k.replace("/ratio", "/signal")] > 0 for k in keys)


def test_alpha_helpers_plug_in(task, pretrained):
    """Integration with the α rules and LoRA+: an already-built model plus an optimizer factory."""
    alpha = pytest.importorskip("lmrepro.lora.alpha")
    _, _, data = task
    choice = alpha.alpha_for("2r", 4)
    model = alpha.apply_lora(base_lm(task, pretrained), 4, choice, TARGETS)
    result = finetune(model, lambda m: alpha.loraplus_optimizer(m, lr=2e-3, ratio=16.0), data, steps=8,
                      batch_size=4)
    assert result.steps_done == 8 and result.rows[-1]["loss"] < result.rows[0]["loss"]


def test_stops_at_a_non_finite_loss(task):
    _, _, data = task

    class Poison:
        def __init__(self):
            self.step = 0

        def after_step(self):
            self.step += 1
            if self.step == 3:
                with torch.no_grad():
                    head.fill_(float("nan"))

    model = lora(tiny_lm(300, seed=0))
    head = model.get_base_model().lm_head.weight
    result = finetune(model, adamw(5e-3), data, steps=8, batch_size=3, callbacks=[Poison()],
                      eval_fn=lambda m: {"x": 1.0})
    assert result.diverged and result.steps_done == 3 and result.final_eval is None
    assert result.rows[-1]["step"] == 4 and result.rows[-1]["loss"] != result.rows[-1]["loss"]  # NaN


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(eval_every=0), "eval_every"),
    (dict(micro_batch_size=0), "micro_batch_size"),
    (dict(batch_size=None), "batch_size"),
])
def test_bad_arguments_fail_early(task, kwargs, match):
    _, _, data = task
    args = dict(steps=2, batch_size=2) | kwargs
    with pytest.raises(ValueError, match=match):
        finetune(tiny_lm(300), adamw(1e-3), data, **args)


def test_domain_adaptation_lowers_held_out_loss(task, pretrained):
    """LM fine-tuning on the package-docs domain: labels = input_ids, eval on the validation windows."""
    from lmrepro.data.domains import build_domain_corpus, domain_windows
    from lmrepro.eval.loss import evaluate_loss

    _, tok, _ = task
    manifest = build_domain_corpus(max_documents=12, seed=0, val_fraction=0.3)
    train = domain_windows(tok, manifest, "train", seq_len=32, max_windows=64)
    val = domain_windows(tok, manifest, "validation", seq_len=32, max_windows=16)
    model = lora(base_lm(task, pretrained), r=8, alpha=16)
    result = finetune(model, adamw(1e-2), {"input_ids": train, "labels": train}, steps=20, batch_size=8,
                      eval_fn=lambda m: {"val_loss": evaluate_loss(m, val.split(8))["loss"]}, eval_every=10)
    first = evaluate_loss(base_lm(task, pretrained), val.split(8))["loss"]
    curve = [r["val_loss"] for r in result.rows if "val_loss" in r]  # steps 10 and 20
    assert len(curve) == 2 and curve[1] < curve[0] < first


# -- generation and accuracy -----------------------------------------------------------------------

def manual_greedy(model, ids, n, eos):
    """No cache, one full forward per token: an independent reference for generate_answers."""
    out = list(ids)
    for _ in range(n):
        with torch.no_grad():
            nxt = int(model(torch.tensor([out]))[0, -1].argmax())
        if nxt == eos:
            break
        out.append(nxt)
    return out[len(ids):]


def test_finetuning_teaches_the_task_and_generation_matches_reference(task):
    train, tok, data = task
    model = tiny_lm(tok.get_vocab_size(), hidden=64)
    assert reasoning_accuracy(model, tok, train) == 0.0
    finetune(model, adamw(1e-2), data, steps=60, batch_size=8, lr_schedule=make_lr_schedule(60))
    assert reasoning_accuracy(model, tok, train) == 1.0
    texts = generate_answers(model, tok, train, max_new_tokens=20, batch_size=3)
    assert texts == [e.target for e in train]
    untrained = tiny_lm(tok.get_vocab_size(), seed=5)
    texts = generate_answers(untrained, tok, train, max_new_tokens=6)
    for text, ex in zip(texts, train):
        ids = tok.encode(ex.prompt).ids
        assert text == tok.decode(manual_greedy(untrained, ids, 6, 0))
        assert not exact_match(text, ex.answer)


def test_generation_of_a_peft_model_uses_its_adapters(task, pretrained):
    train, tok, data = task
    model = lora(base_lm(task, pretrained), r=8, alpha=16)
    finetune(model, adamw(1e-2), data, steps=30, batch_size=8)
    texts = generate_answers(model, tok, train, max_new_tokens=12)
    with model.disable_adapter():
        plain = generate_answers(model, tok, train, max_new_tokens=12)
    merged = model.merge_and_unload()
    assert texts == generate_answers(merged, tok, train, max_new_tokens=12)
    assert texts != plain


# -- paper profile: any HF causal LM and an HF SFT dataset, offline ---------------------------------

@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, task):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok, _ = task
    folder = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    to_hf_tokenizer(tok).save_pretrained(folder)
    return folder, model


def test_load_causal_lm_round_trip(hf_folder):
    folder, original = hf_folder
    model, tokenizer = load_causal_lm(str(folder))
    assert model.training and tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 1
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)
    half, _ = load_causal_lm(str(folder), dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(str(folder), dtype="fp8")


@pytest.fixture
def jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # any cache stays in the temp dir

    def write(rows):
        path = tmp_path / f"rows{len(rows)}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return str(path)

    return write


PAIRS = [{"prompt": f"Q: {i}+{i}=?\nA:", "response": f" {2 * i}", "extra": i} for i in range(6)]


def test_hf_sft_dataset_prompt_response(hf_folder, jsonl):
    folder, _ = hf_folder
    _, tokenizer = load_causal_lm(str(folder))
    path = jsonl(PAIRS + [{"prompt": "long " * 80, "response": " x", "extra": 9}])
    data = hf_sft_dataset("json", tokenizer, max_len=40, data_files=path, prompt_field="prompt",
                          response_field="response")
    assert data["input_ids"].shape[0] == 6  # the long row is skipped
    for i, row in enumerate(PAIRS):
        p = tokenizer(row["prompt"])["input_ids"]
        t = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(p) + len(t)
        assert data["lengths"][i] == n and data["input_ids"][i, :n].tolist() == p + t
        assert data["labels"][i, len(p):n].tolist() == t
        assert (data["labels"][i, :len(p)] == IGNORE_INDEX).all() and (data["labels"][i, n:] == IGNORE_INDEX).all()
        assert (data["input_ids"][i, n:] == tokenizer.pad_token_id).all()
    two = hf_sft_dataset("json", tokenizer, max_len=40, data_files=path, prompt_field="prompt",
                         response_field="response", max_examples=2)
    assert torch.equal(two["labels"], data["labels"][:2, : two["labels"].shape[1]])
    with pytest.raises(Exception, match="max_len=40"):
        hf_sft_dataset("json", tokenizer, max_len=40, data_files=path, prompt_field="prompt",
                       response_field="response", too_long="error")
    rows = [{"prompt": "Q:", "response": " a long answer that will not fit"}]
    p, t = tokenizer("Q:")["input_ids"], tokenizer(rows[0]["response"], add_special_tokens=False)["input_ids"]
    short = hf_sft_dataset("json", tokenizer, max_len=len(p) + 3, data_files=jsonl(rows), prompt_field="prompt",
                           response_field="response", too_long="truncate")
    assert short["input_ids"][0].tolist() == p + t[:3]  # the response is cut (and loses its EOS)
    with pytest.raises(Exception, match="'answer'.*available columns.*extra"):
        hf_sft_dataset("json", tokenizer, max_len=40, data_files=path, prompt_field="prompt", response_field="answer")
    with pytest.raises(ValueError, match="messages_field"):
        hf_sft_dataset("json", tokenizer, max_len=40, data_files=path, prompt_field="prompt")


def test_hf_sft_dataset_messages(hf_folder, jsonl):
    folder, _ = hf_folder
    _, tokenizer = load_causal_lm(str(folder))
    chats = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i}+1?"},
                           {"role": "assistant", "content": str(i + 1)}]} for i in range(3)]
    chats.append({"messages": [{"role": "user", "content": "no answer"}]})  # skipped: no assistant turn
    path = jsonl(chats)
    data = hf_sft_dataset("json", tokenizer, max_len=64, data_files=path, messages_field="messages")
    assert data["input_ids"].shape[0] == 3
    p = tokenizer("system: Be brief.\nuser: 0+1?\nassistant:")["input_ids"]
    t = tokenizer(" 1", add_special_tokens=False)["input_ids"] + [0]
    assert data["input_ids"][0, : len(p) + len(t)].tolist() == p + t
    assert data["labels"][0, len(p): len(p) + len(t)].tolist() == t
    # With a chat template, the prompt is the template's rendering with the generation prompt.
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    data = hf_sft_dataset("json", tokenizer, max_len=64, data_files=path, messages_field="messages")
    p = tokenizer("<system>Be brief.\n<user>0+1?\n<assistant>", add_special_tokens=False)["input_ids"]
    t = tokenizer("1", add_special_tokens=False)["input_ids"] + [0]
    assert data["input_ids"][0, : len(p) + len(t)].tolist() == p + t


def test_lora_step_on_hf_llama(hf_folder, jsonl, task):
    train, _, _ = task
    folder, _ = hf_folder
    model, tokenizer = load_causal_lm(str(folder))
    data = hf_sft_dataset("json", tokenizer, max_len=40, data_files=jsonl(PAIRS), prompt_field="prompt",
                          response_field="response")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    result = finetune(peft_model, adamw(1e-2), data, steps=2, batch_size=3)
    assert result.steps_done == 2 and all(math.isfinite(r["loss"]) for r in result.rows)
    params = dict(peft_model.get_base_model().named_parameters())
    assert all(p.abs().sum() > 0 for n, p in params.items() if "lora_B" in n)
    for name, old in base.items():
        key = name if name in params else name.removesuffix(".weight") + ".base_layer.weight"
        assert torch.equal(params[key], old), name
    # Generation goes through HF generate for HF models and agrees with a cache-free greedy loop.
    texts = generate_answers(peft_model, tokenizer, train[:3], max_new_tokens=5)
    for text, ex in zip(texts, train[:3]):
        ids = tokenizer(ex.prompt)["input_ids"]
        assert text == tokenizer.decode(manual_greedy(lambda x: peft_model(input_ids=x).logits, ids, 5, 0),
                                        skip_special_tokens=True)
