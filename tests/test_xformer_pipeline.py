"""Paper 2 (><former) pipeline: config validation, the DVC stages, run specs and their parameter matching and
accounting, paper-scale sizes, claim metrics on hand-made tables. (The width algorithms are tested in
test_width.py, the accounting in test_flops.py, the whole pipeline at the smoke profile in test_pipeline_e2e.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lmrepro import yaml12

from lmrepro.analysis.claims import CLAIMS_FILE, build_ledger, load_criteria
from lmrepro.analysis.flops import accounting, model_parameters, parameter_count, projection_parameters
from lmrepro.config import ConfigError, derive, load_config
from lmrepro.config.schema_tools import build
from lmrepro.models import DecoderLM
from lmrepro.models.varwidth import block_widths, readout_width
from lmrepro.models.width import budget_deviation
from lmrepro.papers.xformer import artifacts, report, runs
from lmrepro.papers.xformer.config import VARIANTS, XformerConfig, turning_layer
from lmrepro.paths import Paths

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "xformer"
PROFILES = ("smoke", "laptop", "mid", "paper")

# Matched budget (2·V·h + 16·Σw² − wasted) of every run vs the baseline of its size, after rounding and
# re-matching: within this at laptop scale (the laptop profile's match_tolerance is 1%; we get ≤ 0.2%).
LAPTOP_MATCH = 0.005


@pytest.fixture(scope="module")
def params_path() -> Path:
    return ROOT / "params.yaml"


@pytest.fixture(scope="module")
def configs(params_path):
    return {p: load_config(params_path, profile=p) for p in PROFILES}


@pytest.fixture(scope="module")
def criteria():
    return load_criteria(PIPELINE / CLAIMS_FILE)


# ---------------------------------------------------------------------------------------------- config

BASE = {"seq_len": 64, "ablation_size": "a", "quantize": 8, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3,
        "sizes": {"a": {"hidden_size": 32, "num_layers": 8, "num_heads": 2, "max_tokens": 4096},
                  "b": {"hidden_size": 64, "num_layers": 8, "num_heads": 4, "max_tokens": 4096}}}


def _cfg(**edits):
    data = json.loads(json.dumps(BASE))
    for key, value in edits.items():
        target = data
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    return build(XformerConfig, data, "profiles.t.xformer")


def test_valid_section_builds_and_lists_runs():
    cfg = _cfg()
    assert [(r.variant, r.name) for r in cfg.runs()] == [
        ("baseline", "a"), ("baseline", "b"), ("x", "a"), ("x", "b"), ("diamond", "a"), ("increasing", "a"),
        ("decreasing", "a"), ("zero", "a"), ("learned", "a"),
        ("bottleneck", "a-l0.5-r0.3"), ("bottleneck", "a-l0.5-r0.5"), ("bottleneck", "a-l0.75-r0.5")]
    assert {r.seed for r in cfg.runs()} == {0} and {r.token_fraction for r in cfg.runs()} == {1.0}
    assert cfg.smallest_size() == "a" and cfg.variant_runs("bottleneck")[0].bottleneck == (0.5, 0.3)
    assert cfg.lr_of("a") == 1e-3 and _cfg(**{"sizes.b.lr": 5e-4}).lr_of("b") == 5e-4
    assert turning_layer(8, 0.75) == 6 and turning_layer(16, 0.75) == 12 and turning_layer(6, 0.75) == 5


def test_seeds_token_fractions_and_the_sweep_add_runs():
    cfg = _cfg(seeds=[3, 1, 2], seeded_variants=["baseline", "x", "diamond"], token_fractions=[0.25, 1.0],
               ablation_size="b", **{"bottleneck_sweep": {"fractions": [0.75], "ratios": [0.3, 0.6]}})
    by = {v: [(r.name, r.seed, r.token_fraction) for r in cfg.variant_runs(v)] for v in VARIANTS}
    assert by["baseline"] == [("a", 3, 1.0), ("b", 3, 1.0), ("a-tokens0.25", 3, 0.25), ("b-tokens0.25", 3, 0.25),
                              ("b-seed1", 1, 1.0), ("b-seed2", 2, 1.0)]
    assert by["diamond"] == [("b", 3, 1.0), ("b-seed1", 1, 1.0), ("b-seed2", 2, 1.0)]
    assert by["increasing"] == [("b", 3, 1.0)]
    assert by["bottleneck"] == [("a-l0.75-r0.6", 3, 1.0)]  # the recipe point is the x run at a
    assert cfg.seed == 3
    # every run of a stage has its own folder
    for v in VARIANTS:
        assert len({r.name for r in cfg.variant_runs(v)}) == len(cfg.variant_runs(v))


@pytest.mark.parametrize("edits, key, words", [
    ({"seeds": [0, 0]}, "profiles.t.xformer.seeds", "none twice"),
    ({"seeded_variants": ["baseline"]}, "profiles.t.xformer.seeded_variants", "must include baseline and x"),
    ({"seeded_variants": ["baseline", "x", "bottleneck"]}, "profiles.t.xformer.seeded_variants", "not allowed"),
    ({"token_fractions": [0.5]}, "profiles.t.xformer.token_fractions", "must hold 1.0"),
    ({"token_fractions": [0.0, 1.0]}, "profiles.t.xformer.token_fractions", "below the minimum"),
    ({"bottleneck_sweep": {"fractions": [0.5], "ratios": [0.5]}}, "profiles.t.xformer.bottleneck_sweep",
     "must contain the recipe"),
    ({"bottleneck_sweep": {"fractions": [0.75, 0.8], "ratios": [0.3]}}, "profiles.t.xformer.bottleneck_sweep.fractions",
     "must differ"),

    ({"quantize": 6}, "profiles.t.xformer.quantize", "multiple of 2·num_heads"),
    ({"sizes.a.hidden_size": 36}, "profiles.t.xformer.sizes.a.hidden_size", "multiple of quantize"),
    ({"ablation_size": "c"}, "profiles.t.xformer.ablation_size", "not one of the sizes"),
    ({"sizes": {"a": BASE["sizes"]["a"]}}, "profiles.t.xformer.sizes", "at least two sizes"),
    ({"bottleneck_fraction": 0.99}, "profiles.t.xformer.bottleneck_fraction", "must be in [2, 7]"),
    ({"bottleneck_ratio": 0.1}, "profiles.t.xformer.bottleneck_ratio", "rounds to width 0"),
    ({"sizes.b.max_tokens": 100}, "profiles.t.xformer.sizes.b.max_tokens", "less than one step"),
    ({"micro_batch_size": 3}, "profiles.t.xformer.micro_batch_size", "must divide batch_size"),
    ({"sizes.a.num_layers": 2}, "profiles.t.xformer.sizes.a.num_layers", "below the minimum 3"),
    ({"analysis": {"thresholds": [0.1, 0.01]}}, "profiles.t.xformer.analysis.thresholds", "strictly increasing"),
    ({"precision": "fp16"}, "profiles.t.xformer.precision", "not allowed"),
    ({"shape": "x"}, "profiles.t.xformer.shape", "unknown key"),
    ({"sizes.a.heads": 2}, "profiles.t.xformer.sizes.a.heads", "unknown key"),
    ({"lr": "fast"}, "profiles.t.xformer.lr", "expected a number"),
    ({"sizes": {"a/b": BASE["sizes"]["a"], "a": BASE["sizes"]["a"]}}, "profiles.t.xformer.sizes.a/b", "name folders"),
])
def test_invalid_section_names_the_key(edits, key, words):
    with pytest.raises(ConfigError) as err:
        _cfg(**edits)
    assert str(err.value).startswith(key + ":") and words in str(err.value)


def test_every_profile_defines_the_xformer_section(configs, criteria):
    for profile, cfg in configs.items():
        assert cfg.xformer is not None, profile
        # mid: two sizes (its day of GPU time), each at two token budgets for the loss-matched fits
        assert len(cfg.xformer.sizes) >= (2 if profile == "mid" else 3), profile
        assert cfg.xformer.ablation_size in cfg.xformer.sizes
    assert set(criteria) >= {"c1_loss_equal_params", "c3_carry_beats_zero", "c4_x_beats_shapes", "c5_x_avoids_valley"}


def _has(node, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.fixture(scope="module")
def stages() -> dict:
    return yaml12.loads((PIPELINE / "dvc.yaml").read_text())["stages"]


def test_dvc_stage_params_exist_in_every_profile(params_path, stages):
    """DVC refuses a stage whose `params:` key is missing from the file it is listed under."""
    assert set(stages) == {"pretrain", "evaluate", "analyze", "report"}
    params = yaml12.loads(params_path.read_text())
    for name, stage in stages.items():
        for entry in stage.get("do", stage).get("params", []):
            if isinstance(entry, str):
                assert _has(params, entry), f"{name}: {entry} missing from params.yaml"
                continue
            for file, keys in entry.items():
                for profile in PROFILES:
                    path = ROOT / file.replace("${profile}", profile)
                    data = yaml12.loads(path.read_text())
                    for key in keys:
                        assert _has(data, key), f"{name}: {key} missing from {path.relative_to(ROOT)}"
    # foreach over the fixed variant list (params.yaml), whatever the profile
    assert stages["pretrain"]["foreach"] == "${xformer.variants}" and params["xformer"]["variants"] == list(VARIANTS)


def test_dvc_stages_use_the_artifact_names(stages):
    """The pipeline's outputs are the paths ``artifacts`` gives the notebooks (relative to the root)."""
    paths = Paths(ROOT)

    def rel(path: Path) -> str:
        return str(path.relative_to(ROOT))

    def outs(stage: str, kind: str = "outs") -> set[str]:
        body = stages[stage].get("do", stages[stage])
        return {next(iter(o)) if isinstance(o, dict) else o for o in body.get(kind, [])}

    dirs = artifacts.run_dirs(paths, "${item}", "s")
    assert {rel(artifacts.models(paths, "${item}")), rel(artifacts.train_dir(paths, "${item}"))} <= outs("pretrain")
    # resumable checkpoints are the trainer's, not an output: a clone that pulled the models is complete
    assert not any(o.startswith("data/checkpoints") for o in outs("pretrain"))
    assert rel(artifacts.checkpoints(paths, "${item}")).startswith("data/checkpoints/")
    assert dirs["log"].parent == artifacts.train_dir(paths, "${item}") == dirs["provenance"].parent
    assert {rel(artifacts.runs_table(paths)), rel(artifacts.window_losses(paths))} <= outs("evaluate")
    assert outs("evaluate", "metrics") == {rel(artifacts.evaluation(paths))}
    assert outs("analyze") >= {rel(artifacts.analysis_dir(paths))}
    assert rel(artifacts.loss_matched_fits(paths)) in outs("report")
    assert outs("report", "metrics") == {"results/xformer/metrics.json"}  # written by publish
    assert outs("report", "plots") == {rel(artifacts.figures(paths))}


# ---------------------------------------------------------------------------------------------- runs

@pytest.mark.parametrize("profile", ["smoke", "laptop"])
def test_every_run_is_a_valid_parameter_matched_spec(configs, profile):
    cfg = configs[profile]
    x = cfg.xformer
    for run in x.runs():
        variant, size = run.variant, run.size
        spec = runs.run_spec(cfg, variant, size, run.bottleneck)
        s = x.sizes[size]
        assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads) == \
               (s.hidden_size, s.num_layers, s.num_heads, s.num_heads)
        assert not spec.tie_embeddings and spec.vocab_size == cfg.tokenizer.vocab_size
        w = block_widths(spec)
        assert all(wi % x.quantize == 0 and (wi // s.num_heads) % 2 == 0 for wi in w)
        dev = budget_deviation(w, s.hidden_size, spec.vocab_size)
        assert abs(dev) <= x.match_tolerance
        if profile == "laptop":
            assert abs(dev) <= LAPTOP_MATCH, (variant, size, w, dev)
        if variant == "baseline":
            assert spec.widths is None and spec.intermediate_size == 4 * s.hidden_size
        else:
            assert spec.expansion == {"zero": "zero", "learned": "learned"}.get(variant, "carry")
        if variant in ("x", "zero", "learned", "bottleneck"):
            fraction, ratio = run.bottleneck or (x.bottleneck_fraction, x.bottleneck_ratio)
            lstar = turning_layer(s.num_layers, fraction)
            assert w[0] == w[-1] > s.hidden_size and min(w) == w[lstar - 1]
    # zero and learned are the X widths; only the residual rule differs
    ab = x.ablation_size
    assert runs.run_spec(cfg, "zero", ab).widths == runs.run_spec(cfg, "x", ab).widths \
        == runs.run_spec(cfg, "learned", ab).widths


def test_laptop_parameter_counts_match_the_instantiated_models(configs):
    cfg = configs["laptop"]
    base = {}
    for run in cfg.xformer.runs():
        variant, size = run.variant, run.size
        spec = runs.run_spec(cfg, variant, size, run.bottleneck)
        actual = DecoderLM(spec).num_parameters()
        assert model_parameters(spec) == actual
        w = block_widths(spec)
        extra_norm = readout_width(spec) - w[-1]  # the readout norm spans max(w_L, h)
        assert actual == parameter_count(w, spec.hidden_size, spec.vocab_size) + extra_norm \
            + projection_parameters(spec)
        acc = accounting(spec, cfg.xformer.seq_len, 1000)
        if variant == "baseline":
            base[size] = acc
        else:  # effective parameters (without the wasted slices) within 0.5% of the baseline's
            eff = acc["effective_parameters"] - acc["projection_parameters"]
            assert abs(eff / base[size]["effective_parameters"] - 1) < LAPTOP_MATCH, (variant, size)
            assert acc["average_width"] < base[size]["average_width"]


def test_train_config_is_shared_by_every_run_of_a_size(configs):
    cfg = configs["laptop"]
    x = cfg.xformer
    for size, s in x.sizes.items():
        tc = runs.train_config(cfg, size)
        tc.check("t")
        assert tc.seq_len == x.seq_len and tc.seed == x.seed and tc.lr == x.lr_of(size)
        step = x.batch_size * x.seq_len
        assert tc.max_tokens % step == 0 and 0 <= s.max_tokens - tc.max_tokens < step
        assert tc.checkpoint_tokens == [] and tc.eval_every_steps is None


def test_a_stage_with_one_run_trains_it_on_two_threads(configs):
    """The laptop's one-run stages (diamond, increasing, zero, learned) use both cores; a stage with several runs
    gives every run one thread, so the rule follows the run list, not the machine."""
    x = configs["laptop"].xformer
    threads = {v: runs.train_threads(x.variant_runs(v)) for v in VARIANTS}
    assert threads == {v: 2 if len(x.variant_runs(v)) == 1 else 1 for v in VARIANTS}
    assert {v for v, t in threads.items() if t == 2} == {"diamond", "increasing", "zero", "learned"}


# ---------------------------------------------------------------------------------------------- paper sizes

NOMINAL = {"200M": 200e6, "500M": 500e6, "1B": 1e9, "2B": 2e9}
CL100K = 100263


def test_paper_profile_defines_the_four_dense_sizes(configs):
    x = configs["paper"].xformer
    assert {k: (v.num_layers, v.hidden_size, v.num_heads) for k, v in x.sizes.items()} == {
        "200M": (16, 640, 16), "500M": (24, 960, 16), "1B": (32, 1280, 16), "2B": (40, 1600, 16)}
    assert [x.sizes[k].max_tokens for k in NOMINAL] == [10e9, 25e9, 50e9, 100e9]
    assert x.seq_len == 4096 and x.quantize == 32 and x.precision == "bf16" and x.ablation_size == "500M"


@pytest.mark.parametrize("size", list(NOMINAL))
def test_paper_sizes_are_near_nominal_with_the_papers_vocabulary(configs, size):
    """With cl100k (the paper's V = 100,263) the baselines are within −5%/+20% of the nominal sizes (the
    names round: 233M, 546M, 1.10B, 1.96B); the X models within 1% of their baseline (matched budget)."""
    import dataclasses

    cfg = configs["paper"]
    cfg = dataclasses.replace(cfg, tokenizer=derive(cfg.tokenizer, "tokenizer", vocab_size=CL100K))
    s = cfg.xformer.sizes[size]
    base = runs.run_spec(cfg, "baseline", size)
    n = model_parameters(base)
    assert -0.05 < n / NOMINAL[size] - 1 < 0.20, n
    assert n == parameter_count([s.hidden_size] * s.num_layers, s.hidden_size, CL100K)
    xs = runs.run_spec(cfg, "x", size)
    assert abs(budget_deviation(xs.widths, s.hidden_size, CL100K)) < 0.01
    # the paper's savings at equal parameters: ~10–11% average width, a few % FLOPs
    acc_b, acc_x = (accounting(sp, 4096, 1e9) for sp in (base, xs))
    assert 0.87 < acc_x["average_width"] / acc_b["average_width"] < 0.91
    assert 0.95 < acc_x["forward_flops"] / acc_b["forward_flops"] < 0.99


def test_paper_profile_runs_with_its_own_vocabulary(configs):
    cfg = configs["paper"]
    for run in cfg.xformer.runs():
        spec = runs.run_spec(cfg, run.variant, run.size, run.bottleneck)
        s = cfg.xformer.sizes[run.size]
        # the recipe's shapes within 1%; the bottleneck grid's other points round less well (≤ match_tolerance)
        bound = cfg.xformer.match_tolerance if run.variant == "bottleneck" else 0.01
        assert abs(budget_deviation(block_widths(spec), s.hidden_size, spec.vocab_size)) < bound


# ---------------------------------------------------------------------------------------------- report metrics

@pytest.mark.parametrize("profile, depth", [
    ([0.9, 0.8, 0.7, 0.6, 0.5], 0.0),            # monotone: no valley
    ([0.5, 0.6, 0.7, 0.8, 0.9], 0.0),
    ([0.9, 0.8, 0.6, 0.7, 0.85], 0.25),          # min(0.9, 0.85) − 0.6
    ([0.5, 0.9, 0.6, 0.7, 0.8], 0.2),            # min(0.9, 0.8) − 0.6
    ([0.9, 0.8, 0.7, 0.6, 0.3], 0.0),            # the minimum at the end is no mid-depth valley
    ([0.7, 0.7, 0.7], 0.0),
])
def test_valley_depth(profile, depth):
    assert report.valley_depth(profile) == pytest.approx(depth)


@pytest.mark.parametrize("bad", [[0.5, 0.4], [0.5, float("nan"), 0.6], [[0.1, 0.2, 0.3]]])
def test_valley_depth_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        report.valley_depth(bad)


BLOCK_WIDTHS = {"baseline": "10 10 10 10 10", "x": "12 8 4 8 12"}  # X's narrowest block: 3


def _tables(losses: dict[tuple[str, str], float], entropies: dict[tuple, list[float]],
            seeds: dict[tuple[str, int], float] | None = None, grid: dict[tuple[float, float], float] | None = None,
            lens: dict[tuple[str, int], list[float]] | None = None):
    """Hand-made tables of the evaluate / analyze stages. losses: main runs (seed 0, full budget) by (variant,
    size); entropies: residual entropy per stage by (variant, size) for main runs, (variant, "s2", seed) for the
    further seeds; seeds: further seeds at s2 by (variant, seed); grid: bottleneck runs at s1 by (fraction,
    ratio); lens: logit-lens target log-prob per stage by (variant, seed)."""
    rows, windows = [], []
    params = {"s1": 1e6, "s2": 2e6, "s3": 4e6}
    runs = [(v, s, s, 0, True, None, loss) for (v, s), loss in losses.items()]
    runs += [(v, "s2", f"s2-seed{k}", k, False, None, loss) for (v, k), loss in (seeds or {}).items()]
    runs += [("bottleneck", "s1", f"s1-l{f:g}-r{r:g}", 0, False, (f, r), loss) for (f, r), loss in (grid or {}).items()]
    for variant, size, name, seed, main, point, loss in runs:
        n = params[size]
        width = {"baseline": 1.0, "learned": 0.9}.get(variant, 0.9) * np.sqrt(n)
        fraction, ratio = point or ((0.75, 0.3) if variant in ("x", "zero", "learned") else (np.nan, np.nan))
        rows.append({"variant": variant, "size": size, "run": name, "seed": seed, "token_fraction": 1.0, "main": main,
                     "bottleneck_fraction": fraction, "bottleneck_ratio": ratio,
                     "widths": BLOCK_WIDTHS.get(variant, "12 8 4 8 12"), "parameters": n, "val_loss": loss,
                     "train_flops": 6 * n * 1e6 * (0.98 if variant != "baseline" else 1.0),
                     "average_width": width, "flop_ratio": 0.98 if variant != "baseline" else 1.0,
                     "average_width_ratio": 0.9 if variant != "baseline" else 1.0,
                     "parameter_deviation": 0.02 if variant == "learned" else 0.0,
                     "effective_parameter_deviation": 0.001 if variant != "baseline" else 0.0})
        rng = np.random.default_rng(0)  # the same window noise for every run: paired differences are exact
        noise = rng.normal(0, 0.05, 16)
        windows += [{"variant": variant, "size": size, "run": name, "window": i, "loss": loss + e - noise.mean()}
                    for i, e in enumerate(noise)]
    ent = [{"variant": key[0], "size": key[1], "run": f"s2-seed{key[2]}" if len(key) == 3 else key[1],
            "seed": key[2] if len(key) == 3 else 0, "stage": i, "entropy": e}
           for key, prof in entropies.items() for i, e in enumerate(prof)]
    lens_rows = [{"variant": v, "seed": k, "stage": i, "logprob": lp} for (v, k), prof in (lens or {}).items()
                 for i, lp in enumerate(prof)]
    return {"runs": pd.DataFrame(rows), "windows": pd.DataFrame(windows), "entropy": pd.DataFrame(ent),
            "logit_lens": pd.DataFrame(lens_rows)}


# Logit lens (stages 0..5, X's narrowest block 3): the baseline makes 1/5 of its gain after block 3, X 3/5.
LENS = {("baseline", k): [-8, -6, -5, -4, -3.5, -3] for k in range(3)}
LENS |= {("x", k): [-8, -7.5, -7, lp3, -4, -3] for k, lp3 in enumerate((-6.0, -6.1, -5.9))}


def test_claim_values_on_a_hand_made_table(criteria):
    # X better by 0.03 at every size; carry < zero < learned; x beats every other shape; baseline valley;
    # the recipe beats the bottleneck grid; the logit lens differs.
    losses = {("baseline", "s1"): 4.00, ("baseline", "s2"): 3.80, ("baseline", "s3"): 3.60,
              ("x", "s1"): 3.97, ("x", "s2"): 3.77, ("x", "s3"): 3.57,
              ("diamond", "s2"): 3.85, ("increasing", "s2"): 3.82, ("decreasing", "s2"): 3.81,
              ("zero", "s2"): 3.80, ("learned", "s2"): 3.83}
    # seeds 1, 2: paired gaps X − baseline −0.03/−0.02/−0.04 and X − decreasing −0.04/−0.03/−0.05 (sd 0.01 each)
    seeds = {("baseline", 1): 3.81, ("baseline", 2): 3.79, ("x", 1): 3.79, ("x", 2): 3.75,
             ("decreasing", 1): 3.82, ("decreasing", 2): 3.80}
    grid = {(0.5, 0.3): 4.00, (0.5, 0.5): 4.01, (0.75, 0.5): 4.02}
    # stage 0 (the embedding) is left out of the valley: 0.95 there would otherwise make one at stage 1
    ent = {("baseline", "s3"): [0.95, 0.7, 0.5, 0.4, 0.6, 0.8], ("x", "s3"): [0.95, 0.82, 0.8, 0.81, 0.8, 0.82],
           ("baseline", "s1"): [0.95, 0.8, 0.7, 0.75, 0.8], ("x", "s1"): [0.95, 0.8, 0.8, 0.8, 0.8]}
    for k, d in enumerate((0.0, 0.02, -0.02)):  # 3 seeds at s2: baseline depths 0.1, 0.12, 0.08 (sd 0.02), X none
        run = ("s2",) if k == 0 else ("s2", k)
        ent[("baseline", *run)] = [0.95, 0.8, 0.7 - d, 0.8, 0.8]
        ent[("x", *run)] = [0.95, 0.8, 0.8, 0.8, 0.8]
    tables = _tables(losses, ent, seeds, grid, LENS)
    values, evidence = report.claim_values(tables)
    # Reference: least squares of loss ~ seed + variant over the 3 seeded variants × 3 seeds (numpy's lstsq):
    # σ² = RSS / ν, ν = 9 − 5 parameters = (3 − 1)(3 − 1), and a one-seed paired gap has variance 2σ².
    table = {"baseline": [3.80, 3.81, 3.79], "x": [3.77, 3.79, 3.75], "decreasing": [3.81, 3.82, 3.80]}
    y = np.array([v for vs in table.values() for v in vs])
    design = np.array([[1.0, *(np.eye(3)[s][1:]), *(np.eye(3)[v][1:])] for v in range(3) for s in range(3)])
    rss = float(np.linalg.lstsq(design, y, rcond=None)[1][0])
    assert values["gap_seed_sd"] == pytest.approx(np.sqrt(2 * rss / 4))
    assert values["gap_seed_dof"] == 4
    assert values["x_loss_gap_max"] == pytest.approx(-0.03)  # s2: the mean of the three seeds' gaps
    assert values["x_loss_gap_noise"] == pytest.approx(values["gap_seed_sd"])
    assert values["flop_ratio_equal_params"] == pytest.approx(0.98)
    assert values["width_ratio_equal_params"] == pytest.approx(0.9)
    assert values["zero_minus_carry"] == pytest.approx(0.03) and values["zero_minus_baseline"] == pytest.approx(0.0)
    assert values["learned_minus_zero"] == pytest.approx(0.03)
    assert values["x_minus_best_shape"] == pytest.approx(3.77 - 3.81)  # seed means (3.77 and 3.81)
    assert values["x_minus_best_shape_noise"] == pytest.approx(values["gap_seed_sd"] / np.sqrt(3))
    assert evidence["x_minus_best_shape"]["best_other_shape"] == "decreasing"
    assert values["baseline_valley_depth"] == pytest.approx(0.3)       # min(0.7, 0.8) − 0.4
    assert values["valley_depth_gap"] == pytest.approx(0.3 - 0.02)     # x: min(0.82, 0.82) − 0.8 at stage 2
    assert evidence["valley_depth_gap"]["valley_depth"]["baseline.s1"] == pytest.approx(0.1)  # min(0.8, 0.8) − 0.7
    assert evidence["valley_depth_gap"]["valley_depth"]["baseline.s2-seed1"] == pytest.approx(0.12)
    assert values["baseline_valley_depth_noise"] == pytest.approx(0.02)
    assert values["valley_depth_gap_noise"] == pytest.approx(0.02)
    assert values["valley_seed_dof"] == 2 and values["logit_lens_seed_dof"] == 2
    assert values["recipe_minus_best_bottleneck"] == pytest.approx(3.97 - 4.00)
    assert evidence["recipe_minus_best_bottleneck"]["best_other"] == "l0.5-r0.3"
    assert values["late_gain_share_gap"] == pytest.approx(0.4)         # 3/5 − 1/5 (seeds 0.6, 0.62, 0.58)
    assert values["late_gain_share_gap_seed_se"] == pytest.approx(0.02 / np.sqrt(3))
    assert evidence["late_gain_share_gap"]["narrowest_block"] == 3
    # loss-matched: X's loss curve is the baseline's shifted left, so it needs less compute / width
    assert 0 < values["compute_ratio_equal_loss"] < 1 and 0 < values["width_ratio_equal_loss"] < 1
    assert evidence["x_loss_gap_max"]["paired_se_windows"]["s1"] == pytest.approx(0.0, abs=1e-9)  # identical noise
    ledger = build_ledger(criteria, values, evidence)
    verdicts = {row["id"]: row["verdict"] for row in ledger}
    # margins: 2 × the noise's 95% upper bound, σ·u95(ν) (one-seed gaps: ν = 4, u95 = 2.37; the valley and the
    # logit lens: 3 seeds, ν = 2, u95 = 4.41)
    margins, sd = {row["id"]: row["margin"] for row in ledger}, values["gap_seed_sd"]
    assert margins["c1_loss_equal_params"] == margins["c6_bottleneck_recipe"] == pytest.approx(2 * sd * 2.3724, 1e-3)
    assert margins["c4_x_beats_shapes"] == pytest.approx(2 * sd / np.sqrt(3) * 2.3724, 1e-3)
    assert margins["c5_baseline_valley"] == margins["c5_x_avoids_valley"] == pytest.approx(2 * 0.02 * 4.4154, 1e-3)
    assert margins["c7_logit_lens"] == pytest.approx(2 * 0.02 / np.sqrt(3) * 4.4154, 1e-3)
    # gaps of 0.03 (X − baseline, zero − carry, recipe − grid) are 3.7σ, but inside 2 × σ's upper bound (0.039)
    assert verdicts["c1_loss_equal_params"] == verdicts["c6_bottleneck_recipe"] == "inconclusive"
    assert verdicts["c3_carry_beats_zero"] == verdicts["c3_zero_beats_learned"] == "inconclusive"
    assert verdicts["c4_x_beats_shapes"] == "reproduced"  # −0.04 against 0.022 (a difference of seed means)
    assert verdicts["c5_x_avoids_valley"] == verdicts["c7_logit_lens"] == "reproduced"
    assert verdicts["c5_baseline_valley"] == "reproduced"  # 0.3 > 0.02 + 0.177

    # zero padding far behind the baseline: the narrow blocks bind, the residual-rule claims are not testable
    tables = _tables({**losses, ("zero", "s2"): 4.06}, ent, seeds, grid, LENS)
    values, _ = report.claim_values(tables)
    verdicts = {row["id"]: row["verdict"] for row in build_ledger(criteria, values)}
    assert verdicts["c3_carry_beats_zero"] == verdicts["c3_zero_beats_learned"] == "not testable at this scale"
    # one seed: no noise measured, every noise-based margin is unknown and its verdict inconclusive
    values, _ = report.claim_values(_tables(losses, ent, None, grid, {k: v for k, v in LENS.items() if k[1] == 0}))
    verdicts = {row["id"]: row["verdict"] for row in build_ledger(criteria, values)}
    assert verdicts["c1_loss_equal_params"] == verdicts["c4_x_beats_shapes"] == "inconclusive"
    assert verdicts["c7_logit_lens"] == "inconclusive"
    # the valley claims without seeded entropy profiles: no noise, inconclusive however deep the valley
    values, _ = report.claim_values(_tables(losses, {k: v for k, v in ent.items() if len(k) == 2 and k[1] != "s2"},
                                            seeds, grid, LENS))
    verdicts = {row["id"]: row["verdict"] for row in build_ledger(criteria, values)}
    assert verdicts["c5_baseline_valley"] == verdicts["c5_x_avoids_valley"] == "inconclusive"


def test_claim_values_turn_against_the_claims(criteria):
    # X worse at one size (+0.05), zero beats carry, a shape beats X, no valley anywhere, the grid beats the recipe,
    # the logit lens is the same.
    losses = {("baseline", "s1"): 4.00, ("baseline", "s2"): 3.80, ("baseline", "s3"): 3.60,
              ("x", "s1"): 3.98, ("x", "s2"): 3.85, ("x", "s3"): 3.595,
              ("diamond", "s2"): 3.80, ("increasing", "s2"): 3.90, ("decreasing", "s2"): 3.90,
              ("zero", "s2"): 3.77, ("learned", "s2"): 3.775}
    seeds = {("baseline", 1): 3.81, ("baseline", 2): 3.79, ("x", 1): 3.85, ("x", 2): 3.85,
             ("decreasing", 1): 3.91, ("decreasing", 2): 3.89}   # gaps 0.05/0.04/0.06 and −0.05/−0.06/−0.04
    grid = {(0.5, 0.3): 3.90, (0.5, 0.5): 4.01, (0.75, 0.5): 4.02}
    same = {(v, k): [-8, -6, -5, -4, -3.5, -3 + 0.01 * k] for v in ("baseline", "x") for k in range(3)}
    flat = [0.95, 0.5, 0.55, 0.6, 0.65]  # the drop after the embedding is no valley
    # seed spread at s2: baseline depths 0, 0.002, 0 (sd 0.0012: 2·sd·u95(2) = 0.0102, about the floors)
    ent = {("baseline", "s3"): flat, ("x", "s3"): flat, ("x", "s2"): flat, ("x", "s2", 1): flat, ("x", "s2", 2): flat,
           ("baseline", "s2"): flat, ("baseline", "s2", 1): [0.95, 0.5, 0.55, 0.548, 0.6], ("baseline", "s2", 2): flat}
    tables = _tables(losses, ent, seeds, grid, same)
    values, _ = report.claim_values(tables)
    assert values["x_loss_gap_max"] == pytest.approx(0.05)
    assert values["zero_minus_carry"] == pytest.approx(-0.08)
    assert values["learned_minus_zero"] == pytest.approx(0.005)
    assert values["x_minus_best_shape"] == pytest.approx(0.05)   # diamond, one seed:
    assert values["x_minus_best_shape_noise"] == pytest.approx(values["gap_seed_sd"] * np.sqrt((1 + 1 / 3) / 2))
    assert values["baseline_valley_depth"] == 0 and values["valley_depth_gap"] == 0
    assert values["late_gain_share_gap"] == pytest.approx(0.0, abs=1e-12)
    verdicts = {r["id"]: r["verdict"] for r in build_ledger(criteria, values)}
    assert verdicts["c1_loss_equal_params"] == "not reproduced"
    assert verdicts["c3_carry_beats_zero"] == "not reproduced"
    assert verdicts["c3_zero_beats_learned"] == "inconclusive"  # 0.005: inside its margin
    assert verdicts["c4_x_beats_shapes"] == "not reproduced"
    assert verdicts["c5_x_avoids_valley"] == "inconclusive"
    assert verdicts["c6_bottleneck_recipe"] == verdicts["c7_logit_lens"] == "not reproduced"
    # no valley at all can never count as reproducing one: 0 < 0.02 − 0.0102
    assert verdicts["c5_baseline_valley"] == "not reproduced"


@pytest.mark.parametrize("logprob, turning, share", [
    ([-8, -6, -5, -4, -3.5, -3], 3, 0.2), ([-8, -6, -5, -4, -3.5, -3], 1, 0.6), ([-5, -5, -5], 1, float("nan"))])
def test_late_gain_share(logprob, turning, share):
    assert report.late_gain_share(logprob, turning) == pytest.approx(share, nan_ok=True)


@pytest.mark.parametrize("turning", [0, 5])
def test_late_gain_share_needs_an_inner_block(turning):
    with pytest.raises(ValueError, match="turning layer"):
        report.late_gain_share([-8, -6, -5, -4, -3.5, -3], turning)


def test_loss_matched_ratio_recovers_a_known_shift():
    """X's loss = the baseline's at 1/0.8 of the compute: the ratio at equal loss is 0.8 (exact power laws)."""
    C = np.array([1e15, 4e15, 1.6e16])
    base = 10 * C ** -0.05
    x = 10 * (C / 0.8) ** -0.05
    table = pd.DataFrame({"variant": ["baseline"] * 3 + ["x"] * 3, "size": ["s1", "s2", "s3"] * 2,
                          "train_flops": np.r_[C, C], "average_width": np.r_[C, C] ** 0.25,
                          "val_loss": np.r_[base, x]})
    values, fits = report.loss_matched(table)
    assert values["compute_ratio_equal_loss"] == pytest.approx(0.8, rel=1e-9)
    assert values["width_ratio_equal_loss"] == pytest.approx(0.8 ** 0.25, rel=1e-9)
    assert set(fits.variant) == {"baseline", "x"} and (fits.r2 > 0.999999).all()


def test_paired_se_uses_shared_windows():
    w = pd.DataFrame({"variant": ["a"] * 4 + ["b"] * 4, "size": ["s"] * 8, "run": ["s"] * 8, "window": [0, 1, 2, 3] * 2,
                      "loss": [1.0, 2.0, 3.0, 4.0, 1.1, 2.1, 3.3, 4.1]})
    # another seed's run of the same variant and size is not part of the main runs' pairing
    w = pd.concat([w, w.assign(run="s-seed1", loss=w.loss * 3)])
    diff = np.array([-0.1, -0.1, -0.3, -0.1])
    assert report.paired_se(w, "a", "b", "s") == pytest.approx(diff.std(ddof=1) / 2)


