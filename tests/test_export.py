"""`python -m lmrepro.export`: a pipeline model folder → a transformers folder that AutoModelForCausalLM and
AutoTokenizer load in a fresh interpreter (lmrepro installed, nothing imported), with the same logits."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lmrepro.data.tokenizer import save_tokenizer, train_bpe_tokenizer
from lmrepro.export import export, model_folder
from lmrepro.models.lm import DecoderLM
from lmrepro.models.spec import LMSpec, layers_from_pattern
from lmrepro.paths import Paths
from lmrepro.train.checkpoint import save_model

PATTERNS = {"full": ["full", "full"], "swa-nope": ["swa-4", "full-nope"], "lightning": ["lightning", "full"],
            "mamba2": ["mamba2", "full"], "gdn": ["gdn", "full"]}
TEXTS = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(200)]

LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
ids = torch.tensor(json.loads(sys.argv[2]))
out = {}
for folder in sys.argv[3:]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).double().eval()
    assert "lmrepro" not in sys.modules["__main__"].__dict__
    with torch.no_grad():
        out[folder] = model(ids).logits.tolist()
out["tokens"] = AutoTokenizer.from_pretrained(sys.argv[3])(sys.argv[1])["input_ids"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    paths = Paths(root)
    tok = train_bpe_tokenizer(TEXTS, vocab_size=300)
    paths.tokenizer.parent.mkdir(parents=True)
    save_tokenizer(tok, paths.tokenizer)
    return paths, tok


def make(pattern, vocab, **kw) -> DecoderLM:
    torch.manual_seed(0)
    spec = LMSpec(vocab_size=vocab, hidden_size=32, num_layers=len(pattern), num_heads=4, num_kv_heads=2,
                  intermediate_size=64, max_seq_len=64, layers=layers_from_pattern(pattern), ssm_head_dim=16,
                  ssm_state_size=8, **kw)
    return DecoderLM(spec).double().eval()


def test_every_mixer_round_trips_through_a_fresh_interpreter(project, tmp_path):
    paths, tok = project
    vocab = tok.get_vocab_size()
    models = {name: make(p, vocab) for name, p in PATTERNS.items()}
    models["varwidth-x"] = make(["full"] * 3, vocab, widths=(48, 16, 48), expansion="learned")
    ids = torch.randint(0, vocab, (2, 11))
    folders = []
    for name, model in models.items():
        save_model(model, paths.data / "hybrid_attention" / "models" / name / "s1-seed0" / "final",
                   extra={"tokens_seen": 1234})
        folders.append(str(export(paths.data / "hybrid_attention" / "models" / name / "s1-seed0",
                                  tmp_path / name, paths=paths)))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    text = "def f7(x):\n    return x"
    out = subprocess.run([sys.executable, "-c", LOAD, text, json.dumps(ids.tolist()), *folders], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    for name, folder in zip(models, folders):
        with torch.no_grad():
            expected = models[name](ids)
        torch.testing.assert_close(torch.tensor(loaded[folder], dtype=torch.float64), expected.float().double(),
                                   rtol=1e-5, atol=1e-5)  # saved in float32, as the pipeline saves models
    assert loaded["tokens"] == tok.encode(text, add_special_tokens=False).ids


def test_model_card_names_the_run(project, tmp_path):
    paths, tok = project
    model = make(PATTERNS["gdn"], tok.get_vocab_size())
    run = paths.data / "xformer" / "models" / "x" / "s2" / "final"
    save_model(model, run, extra={"tokens_seen": 4096})
    provenance = paths.results("xformer") / "train" / "x" / "s2.provenance.json"
    provenance.parent.mkdir(parents=True)
    provenance.write_text(json.dumps({"git": {"commit": "abc123", "dirty": False}, "seed": 3, "processes": 1,
                                      "device": {"cpu_capability": "AVX2"}, "config": {"profile": "laptop"}}))
    ledger = {"paper": "xformer", "profile": "laptop", "claims": [
        {"id": "c1_loss", "value": -0.1, "criterion": "gap < 0 ± 0.05", "verdict": "reproduced"}]}
    (paths.results("xformer") / "claims.json").write_text(json.dumps(ledger))
    card = (export(run, tmp_path / "x-s2", paths=paths) / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for expected in ("tags: [lmrepro, xformer]", "training tokens: 4,096", "git commit abc123", "seed 3",
                     "profile: laptop", '"cpu_capability": "AVX2"', "| c1_loss | -0.1 | gap < 0 ± 0.05 | reproduced |",
                     "2 layers [gdn, full]"):
        assert expected in card, expected


def test_bad_inputs_are_named(project, tmp_path):
    paths, tok = project
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        model_folder(tmp_path)
    other = make(PATTERNS["full"], tok.get_vocab_size() + 5)
    save_model(other, tmp_path / "m")
    with pytest.raises(ValueError, match="pass the tokenizer it was trained with"):
        export(tmp_path / "m", tmp_path / "out", paths=paths)
    with pytest.raises(FileNotFoundError, match="foundation-data stage or `dvc pull`"):
        export(tmp_path / "m", tmp_path / "out", paths=Paths(tmp_path / "elsewhere"))
