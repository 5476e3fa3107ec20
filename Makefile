# Two commands for a new user: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

EXTRAS := requirements-app.txt requirements-ray.txt requirements-tensorboard.txt

.PHONY: venv test lint demo app clean-demo

# The optional extras are installed too, so that their tests run in CI.
$(STAMP): requirements.txt requirements-dev.txt $(EXTRAS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt \
		$(addprefix -r ,$(EXTRAS))
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

demo: $(STAMP)
	PY=$(PY) bash recipes/demo.sh

app: $(STAMP)
	$(PY) -m app $(if $(MODEL),--model-restore $(MODEL),)

clean-demo:
	rm -rf demo_out
