"""`pip install lmrepro` (no extras) is a working library: the core's dependencies leave out the pipeline, LoRA and
GPU packages, and the models, ops, data, trainer, evaluation and analysis run with those packages unimportable
(a fresh interpreter whose import system refuses them, as on a machine that installed only the core)."""

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS_ONLY = {"dvc", "papermill", "jupyterlab", "ipykernel", "ipywidgets", "nbformat", "matplotlib", "seaborn",
               "peft", "flash-linear-attention", "flash-attn"}
MAC = {**default_environment(), "sys_platform": "darwin", "platform_system": "Darwin"}

CORE_RUN = r"""
import importlib.abc, sys
BLOCKED = {"dvc", "papermill", "jupyterlab", "jupyter_server", "ipykernel", "ipywidgets", "nbformat",
           "matplotlib", "seaborn", "peft", "fla", "flash_attn", "triton"}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (core-only install)")
sys.meta_path.insert(0, Refuse())

import tempfile
from pathlib import Path
import torch
from lmrepro.analysis import claims, flops, scaling
from lmrepro.config import TrainConfig
from lmrepro.data import write_shards
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.train import Trainer, load_model

spec = LMSpec(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=32,
              max_seq_len=16)
docs = [[(7 * i + j) % 60 + 2 for j in range(40)] for i in range(40)]
cfg = TrainConfig(seq_len=16, batch_size=4, micro_batch_size=4, max_tokens=3 * 4 * 16, lr=1e-3, precision="fp32")
with tempfile.TemporaryDirectory() as tmp:
    write_shards(docs, Path(tmp) / "train", eos_id=1, vocab_size=64)
    result = Trainer(spec, cfg, Path(tmp) / "train", Path(tmp) / "out", Path(tmp) / "ckpt", progress=False).fit()
    model = load_model(result.final_dir)
assert result.completed and isinstance(model, DecoderLM)
assert flops.training_flops([16, 16], 16, 64, 16, 1000) > 0
print("core ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""


def test_core_dependencies_leave_out_the_extras():
    core = {Requirement(r).name for r in PROJECT["dependencies"]}
    assert core & EXTRAS_ONLY == set()
    extras = {Requirement(r).name for reqs in PROJECT["optional-dependencies"].values() for r in reqs}
    assert EXTRAS_ONLY <= extras  # each still installable, by its extra


def test_core_installs_on_macos_without_triton():
    on_mac = [r.name for r in map(Requirement, PROJECT["dependencies"]) if r.marker is None or r.marker.evaluate(MAC)]
    assert "triton" not in on_mac and "torch" in on_mac
    assert "triton" in [r.name for r in map(Requirement, PROJECT["dependencies"])]  # kept on Linux


def test_readme_commands_install_every_extra_the_pipelines_need():
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[pipeline,lora,dev]"' in makefile


def test_core_runs_with_the_extras_unimportable():
    done = subprocess.run([sys.executable, "-c", CORE_RUN], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core ok []" in done.stdout
