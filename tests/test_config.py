"""params.yaml + profiles/<profile>.yaml loader: the real files load, every bad edit fails naming the file and its
dotted key, and each profile is params.yaml with the profile's values merged on top."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
from lmrepro import yaml12

from lmrepro.config import PROFILES, Config, ConfigError, derive, fingerprint, load_config, paper_schemas

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
# The whole configuration as one dict: {"params": params.yaml, "profiles": {name: profiles/<name>.yaml}}.
BASE = {"params": yaml12.loads(PARAMS.read_text()),
        "profiles": {p: yaml12.loads((ROOT / "profiles" / f"{p}.yaml").read_text()) for p in PROFILES}}


def _write(tmp_path: Path, data) -> Path:
    """Write ``data`` (the BASE layout) as a project: params.yaml and profiles/*.yaml."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml12.dumps(data["params"]))
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for name, block in data["profiles"].items():
        (folder / f"{name}.yaml").write_text(yaml12.dumps(block))
    return path


def _sec(d, dotted: str):
    """The mapping at a dotted path inside the params dict."""
    for part in filter(None, dotted.split(".")):
        d = d[part]
    return d


def _set(dotted: str, value):
    def edit(d):
        *head, last = dotted.split(".")
        _sec(d, ".".join(head))[last] = value
    return edit


def _del(dotted: str):
    def edit(d):
        *head, last = dotted.split(".")
        del _sec(d, ".".join(head))[last]
    return edit


def _both(*edits):
    def edit(d):
        for e in edits:
            e(d)
    return edit


S = "profiles.smoke"

# (id, edit of the params dict, key the message must start with, extra words it must contain)
REJECTIONS = [
    ("unknown-top-level", _set("params.profilez", "smoke"), "params.profilez", "allowed"),
    ("unknown-profile", _set("profiles.huge", copy.deepcopy(BASE["profiles"]["smoke"])), "profiles.huge", "smoke"),
    ("missing-profile", _del("profiles.paper"), "profiles.paper", "not found"),
    ("profile-huge", _set("params.profile", "huge"), "params.profile", "laptop"),
    ("profile-not-mapping", _set("profiles.smoke", ["smoke"]), "profiles.smoke", "mapping"),
    ("section-not-mapping", _set(f"{S}.train", [1, 2]), f"{S}.train", "mapping"),
    ("unknown-section", _set(f"{S}.trian", {}), f"{S}.trian", "allowed"),
    ("unknown-key-train", _set(f"{S}.train.lr_rate", 0.1), f"{S}.train.lr_rate", "'lr'"),
    ("unknown-key-model", _set(f"{S}.model.n_heads", 2), f"{S}.model.n_heads", "'num_heads'"),
    ("unknown-key-hf", _set("profiles.paper.data.hf.subset", "x"), "profiles.paper.data.hf.subset", "'name'"),
    ("missing-section", _del(f"{S}.tokenizer"), "either.smoke.tokenizer.vocab_size", "missing"),
    ("missing-key", _del(f"{S}.model.hidden_size"), "either.smoke.model.hidden_size", "missing"),
    ("missing-key-train", _del(f"{S}.train.lr"), "either.smoke.train.lr", "missing"),
    ("str-for-int", _set(f"{S}.train.seq_len", "64"), f"{S}.train.seq_len", "integer"),
    ("float-for-int", _set(f"{S}.train.seq_len", 63.5), f"{S}.train.seq_len", "integer"),
    ("bool-for-int", _set(f"{S}.model.num_layers", True), f"{S}.model.num_layers", "integer"),
    ("list-for-int", _set(f"{S}.train.batch_size", [8]), f"{S}.train.batch_size", "integer"),
    ("inf-for-int", _set(f"{S}.train.max_tokens", float("inf")), f"{S}.train.max_tokens", "integer"),
    ("str-for-float", _set(f"{S}.train.lr", "fast"), f"{S}.train.lr", "number"),
    ("bool-for-float", _set(f"{S}.train.lr", True), f"{S}.train.lr", "number"),
    ("nan-float", _set(f"{S}.train.lr", float("nan")), f"{S}.train.lr", "finite"),
    ("inf-float", _set(f"{S}.train.weight_decay", float("inf")), f"{S}.train.weight_decay", "finite"),
    ("int-for-bool", _set(f"{S}.model.tie_embeddings", 1), f"{S}.model.tie_embeddings", "true or false"),
    ("int-for-str", _set(f"{S}.data.source", 3), f"{S}.data.source", "string"),
    ("scalar-for-list", _set(f"{S}.train.checkpoint_tokens", 2048), f"{S}.train.checkpoint_tokens", "list"),
    ("list-item-type", _set(f"{S}.train.checkpoint_tokens", [2048, "x"]), f"{S}.train.checkpoint_tokens[1]",
     "integer"),
    ("betas-length", _set(f"{S}.train.betas", [0.9]), f"{S}.train.betas", "two"),
    ("negative-lr", _set(f"{S}.train.lr", -1e-3), f"{S}.train.lr", "minimum"),
    ("lr-too-big", _set(f"{S}.train.lr", 2.0), f"{S}.train.lr", "maximum"),
    ("val-fraction-1", _set(f"{S}.data.val_fraction", 1.0), f"{S}.data.val_fraction", "maximum"),
    ("val-fraction-0", _set(f"{S}.data.val_fraction", 0.0), f"{S}.data.val_fraction", "minimum"),
    ("vocab-too-small", _set(f"{S}.tokenizer.vocab_size", 257), f"{S}.tokenizer.vocab_size", "258"),
    ("zero-layers", _set(f"{S}.model.num_layers", 0), f"{S}.model.num_layers", "minimum"),
    ("beta-out-of-range", _set(f"{S}.train.betas", [0.9, 1.0]), f"{S}.train.betas", "maximum"),
    ("checkpoint-zero", _set(f"{S}.train.checkpoint_tokens", [0, 2048]), f"{S}.train.checkpoint_tokens", "minimum"),
    ("schedule-choice", _set(f"{S}.train.schedule", "linear"), f"{S}.train.schedule", "'cosine'"),
    ("precision-choice", _set(f"{S}.train.precision", "fp16"), f"{S}.train.precision", "'bf16'"),
    ("source-choice", _set(f"{S}.data.source", "web"), f"{S}.data.source", "'stdlib'"),
    ("heads-not-dividing", _set(f"{S}.model.num_heads", 3), f"{S}.model.num_heads", "divide"),
    ("kv-not-dividing", _both(_set(f"{S}.model.num_heads", 4), _set(f"{S}.model.num_kv_heads", 3)),
     f"{S}.model.num_kv_heads", "divide"),
    ("kv-more-than-heads", _set(f"{S}.model.num_kv_heads", 4), f"{S}.model.num_kv_heads", "divide"),
    ("odd-head-dim", _set(f"{S}.model.hidden_size", 34), f"{S}.model.num_heads", "even"),
    ("train-seq-gt-max", _set(f"{S}.train.seq_len", 192), f"{S}.train.seq_len", "max_seq_len"),
    ("eval-seq-gt-max", _set(f"{S}.eval.seq_len", 161), f"{S}.eval.seq_len", "max_seq_len"),
    ("longppl-docs-gt-evaluator", _set(f"{S}.hybrid_attention.seq_len", 192), f"{S}.hybrid_attention.seq_len",
     "LongPPL evaluator"),
    ("micro-not-dividing", _set(f"{S}.train.micro_batch_size", 3), f"{S}.train.micro_batch_size", "divide"),
    ("micro-gt-batch", _set(f"{S}.train.micro_batch_size", 16), f"{S}.train.micro_batch_size", "divide"),
    ("below-one-step", _both(_set(f"{S}.train.max_tokens", 511), _set(f"{S}.train.checkpoint_tokens", [])),
     f"{S}.train.max_tokens", "one step"),
    ("checkpoint-beyond-max", _set(f"{S}.train.checkpoint_tokens", [2048, 20480]), f"{S}.train.checkpoint_tokens",
     "max_tokens"),
    ("checkpoint-unsorted", _set(f"{S}.train.checkpoint_tokens", [5120, 2048]), f"{S}.train.checkpoint_tokens",
     "increasing"),
    ("checkpoint-duplicate", _set(f"{S}.train.checkpoint_tokens", [2048, 2048]), f"{S}.train.checkpoint_tokens",
     "increasing"),
    ("wsd-overlap", _both(_set(f"{S}.train.schedule", "wsd"), _set(f"{S}.train.warmup_fraction", 0.5),
                          _set(f"{S}.train.decay_fraction", 0.6)), f"{S}.train.decay_fraction", "warmup_fraction"),
    ("hf-without-hf", _del("profiles.paper.data.hf"), "either.paper.data.hf", "source is 'hf'"),
    ("hf-missing-path", _del("profiles.paper.data.hf.path"), "either.paper.data.hf.path", "missing"),
    ("profile-inside-profile", _set(f"{S}.profile", "smoke"), f"{S}.profile", "allowed"),
    # Shared values (params.yaml) are validated in every profile and named in params.yaml.
    ("shared-bad", _set("params.eval.batch_size", 0), "params.eval.batch_size", "minimum"),
    ("shared-paper-bad", _set("params.hybrid_attention.full_attention_every", 0),
     "params.hybrid_attention.full_attention_every", "minimum"),
    ("paper-profile-bad", _set("profiles.laptop.hybrid_attention.seq_len", 4),
     "profiles.laptop.hybrid_attention.seq_len", "minimum"),
    ("paper-unknown-key", _set("params.xformer.widths", [1]), "params.xformer.widths", "allowed keys"),
    ("foreach-list-bad", _set("params.hybrid_attention.architectures", ["full", "swa-tiny"]),
     "params.hybrid_attention.architectures", "'swa-small'"),
    # A broken profile fails even when another one is selected (here: the default, laptop).
    ("broken-paper", _set("profiles.paper.model.num_kv_heads", 5), "profiles.paper.model.num_kv_heads", "divide"),
    ("broken-smoke", _set(f"{S}.eval.batch_size", 0), f"{S}.eval.batch_size", "minimum"),
]




def _expected(key: str) -> str:
    """The message prefix for a table key: profiles.<p>.k → 'profiles/<p>.yaml: k', params.k → 'params.yaml: k',
    either.<p>.k (a key missing from both files) → 'params.yaml or profiles/<p>.yaml: k'."""
    head, _, rest = key.partition(".")
    if head == "params":
        return f"params.yaml: {rest}"
    if head in ("profiles", "either"):
        name, _, rest = rest.partition(".")
        prefix = f"profiles/{name}.yaml" if head == "profiles" else f"params.yaml or profiles/{name}.yaml"
        return f"{prefix}: {rest}" if rest else prefix
    return key


@pytest.mark.parametrize("profile", PROFILES)
def test_real_params_load(profile):
    cfg = load_config(PARAMS, profile=profile)
    assert isinstance(cfg, Config) and cfg.profile == profile
    assert cfg.train.seq_len <= cfg.model.max_seq_len
    assert cfg.train.max_steps >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_default_profile_is_the_files():
    assert load_config(PARAMS).profile == BASE["params"]["profile"]


def test_explicit_profile_overrides_file(tmp_path):
    data = copy.deepcopy(BASE)
    data["params"]["profile"] = "laptop"
    cfg = load_config(_write(tmp_path, data), profile="smoke")
    assert cfg.profile == "smoke" and cfg.model.hidden_size == BASE["profiles"]["smoke"]["model"]["hidden_size"]


def test_defaults_filled():
    cfg = load_config(PARAMS, profile="smoke")
    assert cfg.model.num_kv_heads is None and cfg.model.rope_theta == 10000.0
    assert cfg.train.schedule == "cosine" and cfg.train.betas == [0.9, 0.95]


@pytest.mark.parametrize("case_id, edit, key, words", REJECTIONS, ids=[r[0] for r in REJECTIONS])
@pytest.mark.parametrize("selected", ["smoke", None])
def test_rejections(tmp_path, case_id, edit, key, words, selected):
    data = copy.deepcopy(BASE)
    edit(data)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data), profile=selected)
    msg = str(info.value)
    assert msg.startswith(f"{_expected(key)}:"), msg
    assert words in msg, msg


def test_broken_paper_fails_when_loading_smoke(tmp_path):
    data = copy.deepcopy(BASE)
    data["profiles"]["paper"]["train"]["micro_batch_size"] = 7
    with pytest.raises(ConfigError, match=r"^profiles/paper\.yaml: train\.micro_batch_size:"):
        load_config(_write(tmp_path, data), profile="smoke")


def test_requested_profile_unknown():
    with pytest.raises(ConfigError, match=r"^profile:.*'huge'.*smoke"):
        load_config(PARAMS, profile="huge")


def test_file_profile_checked_even_with_override(tmp_path):
    data = copy.deepcopy(BASE)
    data["params"]["profile"] = "huge"
    with pytest.raises(ConfigError, match=r"^params.yaml: profile:"):
        load_config(_write(tmp_path, data), profile="smoke")


def test_unknown_key_lists_allowed(tmp_path):
    data = copy.deepcopy(BASE)
    data["profiles"]["smoke"]["train"]["lr_rate"] = 0.1
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    for allowed in ("'lr'", "'seq_len'", "'batch_size'", "'schedule'"):
        assert allowed in str(info.value)


def test_non_string_keys(tmp_path):
    data = copy.deepcopy(BASE)
    data["profiles"]["smoke"]["train"].update({1: 2, "zz": 3})
    with pytest.raises(ConfigError, match=r"^profiles/smoke\.yaml: train\.(1|zz):"):
        load_config(_write(tmp_path, data))


def test_whole_float_accepted_as_int(tmp_path):
    data = copy.deepcopy(BASE)
    data["profiles"]["smoke"]["train"]["max_tokens"] = 10240.0
    cfg = load_config(_write(tmp_path, data), profile="smoke")
    assert cfg.train.max_tokens == 10240 and type(cfg.train.max_tokens) is int


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, copy.deepcopy(BASE))
    path.write_text("profile: smoke\ndata: {seed: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_not_a_mapping(tmp_path, text):
    path = _write(tmp_path, copy.deepcopy(BASE))
    path.write_text(text)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_stable_and_sensitive(tmp_path):
    a = load_config(PARAMS, profile="smoke")
    b = load_config(_write(tmp_path, copy.deepcopy(BASE)), profile="smoke")
    assert fingerprint(a) == fingerprint(b) == fingerprint(a)
    assert len(fingerprint(a)) == 12
    changed = dataclasses.replace(a, train=dataclasses.replace(a.train, lr=a.train.lr * 0.5))
    assert fingerprint(changed) != fingerprint(a)
    assert fingerprint(load_config(PARAMS, profile="laptop")) != fingerprint(a)
    # Plain data: key order does not matter, values do.
    assert fingerprint({"x": 1, "y": [1, 2]}) == fingerprint({"y": [1, 2], "x": 1})
    assert fingerprint({"x": 1}) != fingerprint({"x": 2})
    # The YAML round trip (deep copy with a different key order) gives the same fingerprint.
    reordered = {"profiles": copy.deepcopy(BASE["profiles"]),
                 "params": dict(reversed(list(copy.deepcopy(BASE["params"]).items())))}
    assert fingerprint(load_config(_write(tmp_path, reordered), profile="smoke")) == fingerprint(a)


def test_profile_merges_onto_shared_values(tmp_path):
    """A shared value reaches every profile; a profile's value replaces it there only; mappings merge by key."""
    data = copy.deepcopy(BASE)
    data["params"]["hybrid_attention"]["probes"] = {"candidates": 6}
    data["profiles"]["smoke"]["hybrid_attention"]["probes"] = {"candidates": 5, "samples": 48}
    path = _write(tmp_path, data)
    smoke, laptop = load_config(path, profile="smoke"), load_config(path, profile="laptop")
    assert smoke.hybrid_attention.probes.candidates == 5 and smoke.hybrid_attention.probes.samples == 48
    assert laptop.hybrid_attention.probes.candidates == 6
    assert laptop.hybrid_attention.probes.samples == BASE["profiles"]["laptop"]["hybrid_attention"]["probes"]["samples"]
    # lists are replaced, not merged
    assert smoke.hybrid_attention.architectures == BASE["params"]["hybrid_attention"]["architectures"]


def test_papers_found_by_folder_in_order():
    assert list(paper_schemas()) == ["hybrid_attention", "xformer", "lora_alpha"]
    cfg = load_config(PARAMS, profile="smoke")
    assert list(cfg.papers) == list(paper_schemas())
    assert cfg.xformer is cfg.papers["xformer"]
    with pytest.raises(AttributeError, match="papers"):
        cfg.not_a_paper  # noqa: B018


def test_derive_validates_like_the_file():
    cfg = load_config(PARAMS, profile="smoke")
    half = derive(cfg.train, "train", lr=cfg.train.lr / 2)
    assert half.lr == cfg.train.lr / 2 and half.seq_len == cfg.train.seq_len
    with pytest.raises(ConfigError, match=r"^hybrid_attention\.train\.micro_batch_size:.*divide"):
        derive(cfg.train, "hybrid_attention.train", micro_batch_size=3)
    with pytest.raises(ConfigError, match=r"^x\.lr_rate: unknown key"):
        derive(cfg.train, "x", lr_rate=1.0)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_holds_every_key_a_stage_reads_from_it(profile):
    """DVC reads a stage's `profiles/${profile}.yaml: [...]` keys from the profile file itself (no merge onto
    params.yaml): a key one profile leaves out stops every stage that declares it under that profile (a missing
    key must be written out, as null where the schema allows it)."""
    raw = BASE["profiles"][profile]
    dvc_files = [ROOT / "dvc.yaml", *sorted((ROOT / "pipelines").glob("*/dvc.yaml"))]
    for dvc_file in dvc_files:
        for name, stage in yaml12.loads(dvc_file.read_text())["stages"].items():
            for entry in (stage.get("do", stage)).get("params", []):
                for key in (entry.get("profiles/${profile}.yaml", []) if isinstance(entry, dict) else []):
                    node = raw
                    for part in key.split("."):
                        assert isinstance(node, dict) and part in node, \
                            f"{dvc_file.relative_to(ROOT)} {name}: profiles/{profile}.yaml has no {key}"
                        node = node[part]
