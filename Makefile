# `make demo`: set up and fine-tune + classify on the bundled English sample, offline; export to ONNX and
# classify again without torch.
# `make test`: set up and run the test suite (what CI runs); `make test-fast`: the in-process tier only.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_MODEL ?= models/demo

.PHONY: setup demo serve test test-fast bench-train bench-classify bench-classify-scale bench-serve accuracy clean

$(VENV)/.installed: requirements/requirements.txt requirements/onnx.txt requirements/serve.txt requirements/ray.txt requirements/search.txt requirements/tracking.txt requirements/explain.txt requirements/quality.txt requirements/test_requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/test_requirements.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) finetune_plm_native.py --model_fn $(DEMO_MODEL) --train_fn data/review.sample.en.tsv --n_epochs 3
	@echo "--- classify_plm.py < data/review.unlabeled.en.txt"
	$(PY) classify_plm.py --model_fn $(DEMO_MODEL) --with_prob < data/review.unlabeled.en.txt
	@echo "--- export_plm.py, then classify_plm.py --backend onnx (no torch): the same labels, a fraction of the start-up"
	$(PY) export_plm.py --model_fn $(DEMO_MODEL)
	$(PY) classify_plm.py --model_fn $(DEMO_MODEL) --with_prob --backend onnx < data/review.unlabeled.en.txt

# After `make demo`: the demo model over HTTP at http://127.0.0.1:8000 (a page to try it at /, the API at /docs).
serve: setup
	$(PY) serve_plm.py --model_fn $(DEMO_MODEL)

# Two workers on two cores: most of a test's time is a tiny model training or a script's own work
# (tests/conftest.py runs most scripts in process), so two files at a time finish sooner; --dist loadfile keeps a file's shared fixtures (the
# end-to-end fine-tunes) on one worker. --durations: the slowest 25, where to look when the suite nears its 8 minutes.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

bench-train: setup
	$(PY) bench/train_speed.py

bench-classify: setup
	$(PY) bench/classify_speed.py

bench-classify-scale: setup
	$(PY) bench/classify_scale.py

bench-serve: setup
	$(PY) bench/serve_load.py

accuracy: setup
	$(PY) bench/accuracy.py

clean:
	rm -rf $(VENV) models .pytest_cache
