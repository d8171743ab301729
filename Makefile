# The two commands of the README. Both set up .venv/ first when needed
# (tools/setup_env.py is quick when nothing changed).
PYTHON ?= python3
VENV := .venv
DEMO_CONFIG := configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py
DEMO_WORK_DIR := work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes
PYTEST_ARGS ?=

.PHONY: setup demo test

setup:
	@$(PYTHON) tools/setup_env.py

# Train the demo (continuing a finished or interrupted demo run rather than
# starting it over), then evaluate its last checkpoint.
demo: setup
	@echo "[demo] training PISA Faster R-CNN R-18 on the synthetic shapes dataset (about 15 minutes on 2 CPU cores)"
	$(VENV)/bin/pisa-train $(DEMO_CONFIG) --resume
	@echo "[demo] evaluating the last checkpoint"
	$(VENV)/bin/pisa-eval $(DEMO_CONFIG) "$$(cat $(DEMO_WORK_DIR)/last_checkpoint)" --out $(DEMO_WORK_DIR)/metrics.json

test: setup
	@echo "[test] running the test suite (CPU; the end-to-end trainings take several minutes)"
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
