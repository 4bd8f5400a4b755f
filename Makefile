# Two commands for a fresh machine (see README):
#   make repro   – set up, then regenerate every figure with `dvc repro` (profile from params.yaml, default laptop)
#   make test    – set up, then run the test suite
# Other profiles: `make repro PROFILE=paper` runs `dvc exp run --temp -S profile=paper` (a DVC experiment outside
# the workspace: the committed laptop results stay as they are); each profile's scale lives in profiles/<profile>.yaml.
PYTHON ?= python3
# Where the packages live. Default: the project's own .venv, built here with the CPU torch. Inside the activated
# conda environment of environment.yml (GPU machines) or the Docker image (which sets LMREPRO_ENV), that
# environment already holds the pinned packages and CUDA torch: setup only adds the project, never a CPU .venv.
ifeq ($(CONDA_DEFAULT_ENV),lmrepro)
LMREPRO_ENV ?= $(CONDA_PREFIX)
endif
VENV := $(or $(LMREPRO_ENV),$(CURDIR)/.venv)
BIN := $(VENV)/bin
PROFILE ?=
PYTEST_ARGS ?= -n 2 --dist loadfile
export PATH := $(BIN):$(PATH)
# No telemetry; no Hub access except for the mid and paper profiles, which download their data and Llama-3.2-1B
# (the params-check stage checks access first: lmrepro.hub).
export DVC_NO_ANALYTICS := 1
ifeq ($(filter mid paper,$(value PROFILE)),)
export HF_HUB_OFFLINE ?= 1
endif
export TOKENIZERS_PARALLELISM := false

.PHONY: setup repro test remote bench stage-times gpu-check kernel-check vendor notebooks-clean notebooks-check lock lab

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml requirements/lock.txt
ifeq ($(LMREPRO_ENV),)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: this resolves to the CPU build here; an unpinned torch pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[pipeline,lora,dev]"
else
	test -x $(BIN)/python || { echo "LMREPRO_ENV=$(LMREPRO_ENV) has no bin/python"; exit 2; }
	$(BIN)/python -m pip install --quiet --no-deps -e .
endif
	$(BIN)/python -m ipykernel install --sys-prefix --name lmrepro --display-name "Python (lmrepro)" >/dev/null
	# Running or viewing a notebook leaves `git status` clean: Jupyter saves notebooks/ without outputs and keeps
	# results/ read-only (lmrepro.jupyter); git stores notebooks/ through the same clean filter (.gitattributes).
	$(BIN)/python -m lmrepro.jupyter install >/dev/null
	! git rev-parse --git-dir >/dev/null 2>&1 || $(BIN)/python -m lmrepro.notebooks install-filter >/dev/null
	test -d .dvc || $(BIN)/dvc init --quiet
	touch $@

# The last stage (summary) refreshes the README claims tables from the ledgers.
# PROFILE is checked unexpanded ($(value ...): a `$(...)` in it is text, not make syntax) before anything runs,
# and reaches the shell only as an environment variable, never as recipe text; the params-check stage then
# validates every parameter before any other stage.
ifneq ($(filter repro,$(MAKECMDGOALS)),)
ifneq ($(filter-out smoke laptop mid paper,$(value PROFILE))$(word 2,$(value PROFILE)),)
$(error PROFILE must be one of smoke, laptop, mid, paper (or unset for the default); nothing was run)
endif
endif
export PROFILE
# Another profile never touches the committed results: it runs as a DVC experiment in a temporary copy of the
# project (committed files plus uncommitted changes to tracked ones); `dvc exp show` lists it, `dvc exp apply`
# promotes it, `dvc exp push` shares it (README "Profiles as experiments").
# The copy is deleted when the run stops, so its resumable checkpoints live in this checkout (keyed by run
# fingerprint): an interrupted profile run resumes when started again.
repro: setup
	@if [ -z "$$PROFILE" ]; then dvc repro; \
	else LMREPRO_CHECKPOINT_ROOT="$(CURDIR)/data/checkpoints" \
	  dvc exp run --temp --name "$$PROFILE-$$(date +%Y%m%d-%H%M%S)" -S "profile=$$PROFILE"; fi

test: setup
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The project's default DVC remote, for `dvc push` / `dvc pull` (README "Sharing results"), with the DVC plugin its
# scheme needs: URL=s3://bucket/path | gs://… | azure://… | ssh://user@host/path | a folder; ENDPOINT=http://host:port
# for an S3-compatible server. Like PROFILE, URL and ENDPOINT reach the shell only as environment variables.
# unexport: make would otherwise pass the command-line URL to the recipe's environment with $(shell …) expanded.
unexport URL ENDPOINT
remote: export LMREPRO_REMOTE_URL := $(value URL)
remote: export LMREPRO_REMOTE_ENDPOINT := $(value ENDPOINT)
remote: setup
	@test -n "$$LMREPRO_REMOTE_URL" || { echo "usage: make remote URL=s3://bucket/path (or gs://, azure://, ssh://, a folder) [ENDPOINT=http://host:port]" >&2; exit 2; }
	@$(BIN)/python -m lmrepro.remote --install "$$LMREPRO_REMOTE_URL" $${LMREPRO_REMOTE_ENDPOINT:+--endpoint "$$LMREPRO_REMOTE_ENDPOINT"}

bench: setup
	$(BIN)/python benchmarks/ops_cpu.py
	$(BIN)/python benchmarks/models_cpu.py
	$(BIN)/python benchmarks/pool_cpu.py

# Every stage's wall time, CPU use and overhead from the executed notebooks, with this machine's throughput.
stage-times: setup
	$(BIN)/python -m lmrepro.stage_times --bench

# On a GPU machine with torch + triton (nothing installable there): `make vendor` first, here, then carry
# vendor/ and run `PYTHONPATH=src:vendor python3 scripts/gpu_check.py` there (≤ 8 min on one H200).
gpu-check:
	PYTHONPATH=src:vendor python3 scripts/gpu_check.py --json-out gpu_check.json

# fla's kernels and ruamel.yaml (our config reader) as plain files for the GPU machine: the locked pure-Python
# wheels, unzipped into vendor/ (6 MB). fla also imports einops, and the trainer accelerate and safetensors, which
# the H100/H200 image has; elsewhere add them the same way.
vendor: setup
	rm -rf vendor && mkdir -p vendor/.wheels
	$(BIN)/python -m pip download --quiet --no-deps -d vendor/.wheels $$(grep -E '^(fla-core|ruamel\.yaml)==' requirements/lock.txt)
	for w in vendor/.wheels/*.whl; do $(BIN)/python -m zipfile -e $$w vendor; done
	rm -rf vendor/.wheels

# No GPU: fla's Triton kernels on CPU in Triton's interpreter, against the references (fp32, small shapes).
kernel-check: setup
	@$(BIN)/python scripts/gpu_check.py --interpret

# The project root is Lab's root (results/, params.yaml and the READMEs open from the file browser); it opens on
# notebooks/. As root (containers, cloud nodes) Jupyter needs --allow-root; LAB_ARGS passes more (e.g. --no-browser).
lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

notebooks-clean: setup
	$(BIN)/python -m lmrepro.notebooks clean notebooks

notebooks-check: setup
	$(BIN)/python -m lmrepro.notebooks check notebooks

# Refresh the exact versions after changing dependencies in pyproject.toml.
lock: setup
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^lmrepro' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements/lock.txt
