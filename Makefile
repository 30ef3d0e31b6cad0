# make demo: set up .venv, write the synthetic dataset, train Mask R-CNN on the CPU, print the AP tables, draw the curves
#            and pictures of the trained model's predictions (output/demo/pictures/); ends with the path of its report.html.
# make demo-kp: the same for Keypoint R-CNN on synthetic person keypoints (--dataset coco_kp).
# make test: set up .venv and run the whole test suite (what CI runs).
# make test-fast: the unit tests and quick checks only (pytest -m 'not slow'), for the edit-run loop.
# make gpu-check: on a GPU machine, the device check (benchmarks/README.md, "The device check"): at most 8 minutes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/synthetic
OUT ?= output/demo

# The demo's recipe (see README, "The demo"): tiny images, a lighter R-CNN sampling, AdamW.
DEMO_MODEL_KWARGS := box_batch_size_per_image=32 rpn_batch_size_per_image=64 \
	rpn_pre_nms_top_n_train=300 rpn_post_nms_top_n_train=300 rpn_pre_nms_top_n_test=300 rpn_post_nms_top_n_test=300
DEMO_DATA_FLAGS := --num-train 128 --num-val 48 --seed 0
DEMO_FLAGS := --data-path $(DATA) --output-dir $(OUT) --device cpu --weights-backbone none \
	--min-size 128 --max-size 128 -b 4 -j 1 --epochs 3 --lr-steps 2 --opt adamw --lr 0.0003 \
	--print-freq 16 --seed 0 --save-predictions --model-kwargs $(DEMO_MODEL_KWARGS) box_detections_per_img=30
# The demo's CPU kernels and threads, pinned so that its numbers reproduce on every x86-64 machine with AVX2: PyTorch,
# oneDNN and MKL pick AVX-512 code where a CPU has it, and split sums by thread, each adding up in another order
# (README, "The demo").
DEMO_ENV := OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
ifeq ($(shell uname -m),x86_64)
DEMO_ENV += ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
endif
KP_DATA ?= data/synthetic_kp
KP_OUT ?= output/demo_kp
KP_FLAGS := --dataset coco_kp --model keypointrcnn_resnet50_fpn --data-path $(KP_DATA) --output-dir $(KP_OUT) --device cpu \
	--weights-backbone none --min-size 128 --max-size 128 -b 4 -j 1 --epochs 3 --lr-steps 2 --opt adamw --lr 0.0005 \
	--print-freq 16 --seed 0 --model-kwargs $(DEMO_MODEL_KWARGS)
PICTURES := --max-images 8 --upscale-to 256

.PHONY: setup data data-kp demo demo-kp test test-fast lint clean gpu-check

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-extras.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-extras.txt
	touch $@

setup: $(VENV)/.installed

$(DATA)/annotations/instances_val2017.json: synthetic_coco.py synthetic.py Makefile | setup
	$(PY) synthetic_coco.py --output $(DATA) $(DEMO_DATA_FLAGS)

data: $(DATA)/annotations/instances_val2017.json

$(KP_DATA)/annotations/person_keypoints_val2017.json: synthetic_coco.py synthetic.py synthetic_people.py | setup
	$(PY) synthetic_coco.py --keypoints --output $(KP_DATA) --num-train 256 --num-val 64 --seed 0

data-kp: $(KP_DATA)/annotations/person_keypoints_val2017.json

demo: setup data
	rm -rf $(OUT)  # a fresh run each time (train.py refuses to overwrite an earlier run's checkpoint)
	$(DEMO_ENV) $(PY) train.py $(DEMO_FLAGS)
	@if $(PY) -c "import matplotlib" 2>/dev/null; then $(PY) curves.py $(OUT); \
	else echo "No curves: matplotlib is missing; pip install -r requirements-extras.txt, then python curves.py $(OUT)"; fi
	$(DEMO_ENV) $(PY) predict.py --checkpoint $(OUT)/checkpoint.pth $(DATA)/val2017 --output-dir $(OUT)/pictures $(PICTURES)
	@echo "The run's report page: $(OUT)/report.html"

demo-kp: setup data-kp
	rm -rf $(KP_OUT)
	$(PY) train.py $(KP_FLAGS)
	$(PY) predict.py --checkpoint $(KP_OUT)/checkpoint.pth $(KP_DATA)/val2017 --output-dir $(KP_OUT)/pictures $(PICTURES)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(DATA) $(OUT) $(KP_DATA) $(KP_OUT)

gpu-check: setup
	$(PY) benchmarks/gpu_check.py --out output/gpu_check
