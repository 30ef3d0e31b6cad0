# make demo: set up .venv, write the synthetic dataset, train Mask R-CNN on the CPU, print the AP tables, draw the curves.
# make test: set up .venv and run the whole test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/synthetic
OUT ?= output/demo

# The demo's recipe (see README, "The demo"): tiny images, a lighter R-CNN sampling, AdamW.
DEMO_MODEL_KWARGS := box_batch_size_per_image=32 rpn_batch_size_per_image=64 \
	rpn_pre_nms_top_n_train=300 rpn_post_nms_top_n_train=300 rpn_pre_nms_top_n_test=300 rpn_post_nms_top_n_test=300
DEMO_FLAGS := --data-path $(DATA) --output-dir $(OUT) --device cpu --weights-backbone none \
	--min-size 128 --max-size 128 -b 4 -j 1 --epochs 3 --lr-steps 2 --opt adamw --lr 0.0005 \
	--print-freq 16 --seed 0 --model-kwargs $(DEMO_MODEL_KWARGS)

.PHONY: setup data demo test lint clean

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-extras.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-extras.txt
	touch $@

setup: $(VENV)/.installed

$(DATA)/annotations/instances_val2017.json: synthetic_coco.py | setup
	$(PY) synthetic_coco.py --output $(DATA) --num-train 256 --num-val 64 --seed 0

data: $(DATA)/annotations/instances_val2017.json

demo: setup data
	rm -rf $(OUT)  # a fresh run each time (train.py refuses to overwrite an earlier run's checkpoint)
	$(PY) train.py $(DEMO_FLAGS)
	@if $(PY) -c "import matplotlib" 2>/dev/null; then $(PY) curves.py $(OUT); \
	else echo "No curves: matplotlib is missing; pip install -r requirements-extras.txt, then python curves.py $(OUT)"; fi

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(DATA) $(OUT)
