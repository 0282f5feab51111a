# The two commands of the README:
#   make demo   set up, then super-resolve the bundled sample and evaluate it
#   make test   set up, then run the whole test suite headless
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)

demo: setup
	bash scripts/demo.sh $(VENV)

test: setup
	bash scripts/test.sh $(VENV)

clean:
	rm -rf $(VENV) demo_output
