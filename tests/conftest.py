"""Shared fixtures: a tiny token-shard corpus (real text, byte-level ids) and tiny model/train configs."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest

# lmrepro is imported inside the helpers: a package module that is broken mid-edit then fails only
# the tests that use it, not the collection of every test file.

# Byte-level ids 0..255, EOS 256; 258 is the smallest vocabulary params.yaml allows (tokenizer.vocab_size).
EOS_ID = 256
VOCAB_SIZE = 258
_STDLIB_FILES = ("textwrap.py", "string.py", "bisect.py", "colorsys.py", "shlex.py", "heapq.py")


def byte_documents(max_bytes: int = 6000) -> list[list[int]]:
    """Real text without a tokenizer: a few stdlib sources as byte ids (synthetic fallback if missing)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = [list((root / name).read_bytes()[:max_bytes]) for name in _STDLIB_FILES if (root / name).is_file()]
    if len(docs) < 3:  # a stripped-down interpreter: deterministic synthetic text instead
        rng = np.random.default_rng(0)
        docs = [rng.integers(32, 127, size=max_bytes).tolist() for _ in range(len(_STDLIB_FILES))]
    return docs


def write_token_dirs(root: str | Path, shard_tokens: int = 4096) -> tuple[Path, Path]:
    """Write ``root/train`` (all but the last document) and ``root/validation`` shard directories."""
    from lmrepro.data import write_shards

    root = Path(root)
    docs = byte_documents()
    train, val = root / "train", root / "validation"
    write_shards(docs[:-1], train, eos_id=EOS_ID, vocab_size=VOCAB_SIZE, shard_tokens=shard_tokens)
    write_shards(docs[-1:], val, eos_id=EOS_ID, vocab_size=VOCAB_SIZE, shard_tokens=shard_tokens)
    return train, val


@pytest.fixture(scope="session")
def token_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(train_dir, val_dir): ~30k training tokens in several shards, ~6k validation tokens."""
    return write_token_dirs(tmp_path_factory.mktemp("tokens"))


def tiny_spec(**overrides):
    """hidden 32, 2 layers, 2 heads (head dim 16), seq up to 32: a forward pass takes about a millisecond."""
    from lmrepro.models import LMSpec

    base = dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
                intermediate_size=64, max_seq_len=32)
    return LMSpec(**{**base, **overrides})


def tiny_train_config(**overrides):
    """seq_len 16, global batch 4 (2 micro-batches of 2), 12 steps, checkpoints every 5 steps."""
    from lmrepro.config import TrainConfig

    base = dict(seq_len=16, batch_size=4, micro_batch_size=2, max_tokens=12 * 4 * 16, lr=3e-3,
                warmup_fraction=0.2, save_every_steps=5, log_every_steps=1, precision="fp32", seed=0)
    cfg = TrainConfig(**{**base, **overrides})
    cfg.check("train")  # the loader's cross-field rules, so a bad test config fails loudly
    return cfg


@pytest.fixture(scope="session")
def make_spec():
    """Factory fixture: ``make_spec(**overrides)`` → tiny ``LMSpec``."""
    return tiny_spec


@pytest.fixture(scope="session")
def make_train_config():
    """Factory fixture: ``make_train_config(**overrides)`` → small, checked ``TrainConfig``."""
    return tiny_train_config


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one intra-op thread is many times faster than two on a shared 2-core machine.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PIPELINE_FILES = ("dvc.yaml", "params.yaml", "profiles", "pipelines", "src", "notebooks", ".dvcignore", "Makefile")


def pipeline_copy(dest: Path, names=PIPELINE_FILES) -> Path:
    """``dest`` as a git + DVC project holding this checkout's pipeline definitions, parameters, package and
    notebooks (not its data or results), committed — what ``dvc repro`` needs to start."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints")
    for name in names:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True, env=tool_env())
    return dest


def tool_env(**extra) -> dict:
    """The environment for running the project's tools (dvc, papermill, make) from a test."""
    import os
    import sys

    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto's, in a thread) on 127.0.0.1: its endpoint URL, e.g. http://127.0.0.1:40123.
    Its test credentials are set in this process's environment (boto reads nothing from ~/.aws then); pass
    ``S3_CREDENTIALS`` to subprocesses through ``tool_env(**S3_CREDENTIALS)``."""
    import os

    moto_server = pytest.importorskip("moto.server")
    for key, value in S3_CREDENTIALS.items():
        os.environ[key] = value
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_CREDENTIALS.items()
                                                  if k != "AWS_DEFAULT_REGION"}).create_bucket(Bucket=name)


def tiny_lora_setup(cfg, save_every_steps: int | None = None):
    """(cfg, base, data): ``cfg``'s LoRA-α section (the smoke profile's) for 6 steps of 4 rows in micro-batches of
    one row (checkpoints every ``save_every_steps``), a tiny DecoderLM base and a "domain" task whose every third
    training row has no supervised token."""
    import dataclasses

    import torch

    from lmrepro.models import DecoderLM
    from lmrepro.papers.lora_alpha.runs import TaskData

    la = cfg.lora_alpha
    train = dataclasses.replace(la.train, steps={"domain": 6, "reasoning": 6}, micro_batch_size=1,
                                save_every_steps=save_every_steps)
    cfg = dataclasses.replace(cfg, papers={**cfg.papers, "lora_alpha": dataclasses.replace(la, train=train)})
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1, VOCAB_SIZE, (n, 24), generator=g)
        labels = ids.clone()
        labels[:, :8] = -100  # the prompt
        labels[::3] = -100  # rows without a supervised token
        return {"input_ids": ids, "labels": labels}

    torch.manual_seed(0)
    base = DecoderLM(tiny_spec()).train()
    return cfg, base, TaskData("domain", split(18), split(8), split(8), [])
