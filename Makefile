# The two commands of the README. Both set up .venv/ first when needed
# (tools/setup_env.py is quick when nothing changed).
PYTHON ?= python3
VENV := .venv
# lite (default): mmcv-lite, RoIAlign/NMS/nms_match from torchvision and torch, nothing compiled;
# compiled: mmcv with its compiled ops, built once from the sdist and cached (docs: "Compiled mmcv").
MMCV ?= lite
DEMO_CONFIG := configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py
DEMO_WORK_DIR := work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes
PYTEST_ARGS ?=
# e.g. SETUP_ARGS="--offline wheelhouse --use-system-torch" (docs/getting_started.md, "Offline install")
SETUP_ARGS ?=
WHEELHOUSE ?= wheelhouse
TARGET_HAS ?=
TARGET_PYTHON ?=

.PHONY: setup demo test wheelhouse gpu-check

setup:
	@$(PYTHON) tools/setup_env.py --mmcv $(MMCV) $(SETUP_ARGS)

# The files for an offline install, torch aside, into $(WHEELHOUSE)/ (docs/getting_started.md, "Offline install"):
# TARGET_HAS=freeze.txt leaves out what the target already has, TARGET_PYTHON=3.12 its Python's wheels.
wheelhouse:
	@$(PYTHON) tools/setup_env.py --mmcv $(MMCV) --wheelhouse $(WHEELHOUSE) $(if $(TARGET_HAS),--target-has $(TARGET_HAS)) \
		$(if $(TARGET_PYTHON),--target-python $(TARGET_PYTHON))

# Every GPU check and benchmark, on a GPU machine after the set-up (docs/getting_started.md, "GPU check").
gpu-check:
	tools/gpu_check.sh $(GPU_CHECK_ARGS)

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
