"""An input that a stage has not made yet: the error names that stage (an address `dvc repro` accepts, checked
against the project's real stage list) and the `dvc pull` alternative, for every loader of a stage output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from lmrepro.config import load_config
from lmrepro.data import DataError, load_index
from lmrepro.eval.longppl import load_key_tokens
from lmrepro.papers.hybrid_attention.runs import checkpoints
from lmrepro.papers.lora_alpha.evaluate import pre_registered
from lmrepro.papers.lora_alpha.runs import load_task
from lmrepro.papers.xformer.evaluate import final_dir
from lmrepro.paths import Paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages() -> set[str]:
    dvc = Path(sys.executable).with_name("dvc")
    out = subprocess.run([str(dvc), "stage", "list", "--all", "--name-only"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


LOADERS = {
    "shards": (DataError, lambda p: load_index(p.data / "tokens" / "train")),
    "key tokens": (FileNotFoundError, lambda p: load_key_tokens(p.data / "key_tokens.safetensors")),
    "hybrid snapshots": (FileNotFoundError, lambda p: checkpoints(p, "swa-small", "s1", 0)),
    "xformer model": (FileNotFoundError, lambda p: final_dir(p, "x", "s1")),
    "lora task": (FileNotFoundError, lambda p: load_task(p, "domain")),
    "lora base_lr": (FileNotFoundError,
                     lambda p: pre_registered(load_config(ROOT / "params.yaml", profile="smoke"), p, "domain")),
}
STAGES = {"shards": "foundation-data", "key tokens": "pipelines/hybrid_attention/dvc.yaml:key-tokens",
          "hybrid snapshots": "pipelines/hybrid_attention/dvc.yaml:pretrain@swa-small",
          "xformer model": "pipelines/xformer/dvc.yaml:pretrain@x", "lora task": "pipelines/lora_alpha/dvc.yaml:data",
          "lora base_lr": "pipelines/lora_alpha/dvc.yaml:full_ft@domain"}


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_missing_stage_output_names_its_stage_and_dvc_pull(name, tmp_path, stages):
    error, load = LOADERS[name]
    with pytest.raises(error) as info:
        load(Paths(root=tmp_path))
    message = str(info.value)
    named = re.search(r"`dvc repro (\S+)`", message)
    assert named and named.group(1) == STAGES[name] and named.group(1) in stages, message
    assert f"`dvc pull {STAGES[name]}`" in message and str(tmp_path) in message
