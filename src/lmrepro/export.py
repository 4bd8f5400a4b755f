"""Share a trained model as a transformers folder.

``python -m lmrepro.export MODEL_DIR OUT_DIR [--tokenizer FILE] [--push-to-hub REPO_ID]``

MODEL_DIR is a model folder written by the pipeline (``model.safetensors`` + ``spec.json``), or a run folder that
holds one in ``final/``. OUT_DIR gets ``config.json`` + ``model.safetensors``
(:class:`~lmrepro.models.hf.LMReproForCausalLM`), the project tokenizer (``tokenizer.json`` + its config),
``modeling_lmrepro.py`` (two lines importing the classes from the installed lmrepro) and a model card
``README.md`` with the run's provenance, data and the paper's ledger.
With lmrepro installed, ``AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)`` and
``AutoTokenizer.from_pretrained(OUT_DIR)`` load it (or without trust_remote_code after ``import lmrepro.models.hf``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .models.spec import LMSpec
from .paths import Paths

SHIM = '''"""Loads lmrepro's classes (pip install lmrepro) for AutoModelForCausalLM(..., trust_remote_code=True)."""
from lmrepro.models.hf import LMReproConfig, LMReproForCausalLM  # noqa: F401
'''
AUTO_MAP = {"AutoConfig": "modeling_lmrepro.LMReproConfig",
            "AutoModelForCausalLM": "modeling_lmrepro.LMReproForCausalLM"}


def model_folder(path: str | Path) -> Path:
    """``path`` itself when it holds a saved model, else its ``final/`` (FileNotFoundError naming both)."""
    path = Path(path)
    for folder in (path, path / "final"):
        if (folder / "spec.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise FileNotFoundError(f"{path}: no model.safetensors + spec.json here or in {path / 'final'}; give a model "
                            "folder the pipeline wrote (e.g. data/xformer/models/x/s2) — `dvc pull` or the paper's "
                            "pretrain stage makes them")


def run_origin(folder: Path, paths: Paths) -> tuple[str | None, Path | None]:
    """(paper, provenance file) of a model folder inside the project's data/ (None, None elsewhere).

    data/<paper>/models/<arch>/<run>/<final|budget-N> ↔ results/<paper>/train/<arch>/<run>.provenance.json;
    data/models/<name>/<final|budget-N> (the foundation) ↔ results/foundation/provenance/pretrain_<name>.json.
    """
    try:
        parts = folder.resolve().relative_to(paths.data.resolve()).parts
    except ValueError:
        return None, None
    if len(parts) >= 5 and parts[1] == "models":
        paper, arch, run = parts[0], parts[2], parts[3]
        return paper, paths.results(paper) / "train" / arch / f"{run}.provenance.json"
    if len(parts) >= 3 and parts[0] == "models":
        return "foundation", paths.results("foundation") / "provenance" / f"pretrain_{parts[1]}.json"
    return None, None


def _read_json(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _architecture(spec: LMSpec) -> str:
    mixers = ", ".join(layer.name for layer in spec.layers)
    widths = spec.check_widths()
    width = f"widths {list(widths)} ({spec.expansion} expansion)" if widths else f"hidden {spec.hidden_size}"
    return (f"{spec.num_layers} layers [{mixers}], {width}, {spec.num_heads} heads, MLP {spec.intermediate_size}, "
            f"vocabulary {spec.vocab_size}, context {spec.max_seq_len}")


def model_card(name: str, spec: LMSpec, parameters: int, meta: dict[str, Any], paper: str | None,
               provenance: dict[str, Any] | None, data: dict[str, Any] | None, ledger: dict[str, Any] | None) -> str:
    """The README.md of an exported folder (Hub model-card front matter + what made the model)."""
    lines = ["---", "library_name: transformers", "license: mit", "pipeline_tag: text-generation",
             "tags: [lmrepro" + (f", {paper}" if paper else "") + "]", "---", "",
             f"# {name}", "", f"A {parameters:,}-parameter decoder trained by lmrepro"
             + (f" for the `{paper}` pipeline" if paper else "") + ". Load it with lmrepro installed:", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f'model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)',
             f'tokenizer = AutoTokenizer.from_pretrained("{name}")', "```", "",
             "## Architecture", "", _architecture(spec) + ".", "", "## Training", ""]
    if "tokens_seen" in meta:
        lines.append(f"- training tokens: {meta['tokens_seen']:,}")
    if provenance:
        git = provenance.get("git") or {}
        lines += [f"- code: git commit {git.get('commit')}" + (" (uncommitted changes)" if git.get("dirty") else ""),
                  f"- seed {provenance.get('seed')}, {provenance.get('processes', 1)} process(es), "
                  f"device {json.dumps(provenance.get('device'), sort_keys=True)}",
                  f"- profile: {(provenance.get('config') or {}).get('profile', 'unknown')}"]
    else:
        lines.append("- no provenance record found beside this model (exported from outside the project's data/)")
    if data:
        lines += ["", "## Data", "", "Corpus and tokenizer of the project's foundation stage "
                  "(`results/foundation/data_summary.json`):", "",
                  *(f"- {k}: {v}" for k, v in sorted(data.items()))]
    if ledger:
        lines += ["", f"## Claims ledger of the `{paper}` pipeline ({ledger.get('profile')} profile)", "",
                  "| claim | value | criterion | verdict |", "| --- | --- | --- | --- |"]
        for row in ledger["claims"]:
            value = "n/a" if row.get("value") is None else f"{row['value']:.4g}"
            lines.append(f"| {row['id']} | {value} | {row['criterion']} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def export(model_dir: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None,
           paths: Paths | None = None) -> Path:
    """Write the transformers folder ``out_dir`` for the model in ``model_dir`` (see the module docstring);
    ``tokenizer`` defaults to the project's ``data/tokenizer/tokenizer.json``. Returns ``out_dir``."""
    from .data.tokenizer import load_tokenizer, to_hf_tokenizer
    from .models.hf import LMReproForCausalLM
    from .paths import project_paths
    from .train.checkpoint import load_model

    folder = model_folder(model_dir)
    paths = paths or project_paths()
    tokenizer = Path(tokenizer) if tokenizer is not None else paths.tokenizer
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{tokenizer}: no tokenizer; run the foundation-data stage or `dvc pull`, or pass "
                                "--tokenizer")
    tok = load_tokenizer(tokenizer)
    model = load_model(folder)
    if tok.get_vocab_size() != model.spec.vocab_size:
        raise ValueError(f"{tokenizer} has {tok.get_vocab_size()} tokens but the model's vocabulary is "
                         f"{model.spec.vocab_size}: pass the tokenizer it was trained with (--tokenizer)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = LMReproForCausalLM.from_model(model)
    hf.config.auto_map = dict(AUTO_MAP)
    hf.save_pretrained(out)
    to_hf_tokenizer(tok).save_pretrained(out)
    (out / "modeling_lmrepro.py").write_text(SHIM)
    paper, provenance_file = run_origin(folder, paths)
    meta = json.loads((folder / "spec.json").read_text())
    card = model_card(out.name, model.spec, sum(p.numel() for p in model.parameters()), meta, paper,
                      _read_json(provenance_file), _read_json(paths.results("foundation") / "data_summary.json"),
                      _read_json(paths.results(paper) / "claims.json") if paper else None)
    (out / "README.md").write_text(card)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.export", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the project's data/tokenizer)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub repository "
                        "(needs `huggingface-cli login`)")
    args = parser.parse_args(argv)
    out = export(args.model_dir, args.out_dir, args.tokenizer)
    print(f"wrote {out}: {sorted(p.name for p in out.iterdir())}")
    if args.push_to_hub:
        from huggingface_hub import HfApi

        url = HfApi().upload_folder(folder_path=str(out), repo_id=args.push_to_hub, repo_type="model")
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
