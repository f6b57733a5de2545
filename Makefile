# `make demo` and `make test` work on a fresh machine: they create .venv from requirements.txt first
# and install Debian's Fashion-MNIST package when it is missing (the offline miniature's data).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test fashion-mnist miniature-regime miniature-tables miniature-diagnosis gpu-check

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

fashion-mnist:
	@if [ -d /usr/share/datasets/fashion-mnist ] || [ -d data/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
	  || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
	  || echo "could not install dataset-fashion-mnist; torchvision's download will be tried"; \
	fi

demo: $(STAMP) fashion-mnist
	HF_HUB_OFFLINE=1 $(PY) tools/demo.py

test: $(STAMP) fashion-mnist
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# The shifted miniature's regime on clean labels only (zero-shot, linear probe, clean PEFT, clean full
# fine-tuning; 2 seeds, about 5 min): results/miniature/regime.json. Fixed before any detector ran on it.
miniature-regime: $(STAMP) fashion-mnist
	HF_HUB_OFFLINE=1 $(PY) tools/miniature_regime.py

# The shifted miniature's Table 1, Table 2 and Figure 3 (grids/miniature.yaml, 166 commands, 2 jobs; resumable):
# results/miniature/. Estimated 1 h 15 min on an idle 2-core CPU, about 2 h 10 min with other jobs sharing it (the
# in-distribution grid, python tools/miniature_tables.py --variant in_distribution, took 1 h 55 min so).
miniature-tables: $(STAMP) fashion-mnist
	HF_HUB_OFFLINE=1 $(PY) tools/miniature_tables.py

# After miniature-tables: why DeFT's phase 1 goes unstable on the shifted miniature (the grid's DeFT runs per
# class, and three controls on sym 0.4 and sym 0.8; 5 min measured): results/miniature/diagnosis.{json,md}.
miniature-diagnosis: $(STAMP) fashion-mnist
	HF_HUB_OFFLINE=1 $(PY) tools/miniature_diagnosis.py

# Run first on a new machine (a few minutes; generated data, no downloads): every script on CPU and,
# when CUDA is available, in fp32, amp and fp16 on the GPU, compared; then torchrun with 2 processes.
gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) tools/gpu_check.py
