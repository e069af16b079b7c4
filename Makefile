# The two set-up commands of the README: `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
DEMO := demo-out
OPENVINO_ORT := $(VENV)/openvino-ort
# the demo's model family (`huatuo convert synth --arch`): llava-qwen2 (7B), llava-llama (34B), qwen2.5-vl
ARCH ?= llava-qwen2

.PHONY: venv install system-deps demo check test test-fast package bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the CPU wheel that ships on local disk. llama-cpp-python is huatuo's portable
# build (every x86-64 CPU variant, chosen at run time; packaging/llama_wheel.py): built once per
# machine into a folder keyed by its build flags (~/.cache/huatuo-build), never taken from pip's
# cache, which is keyed by the sdist alone and would hand back a -march=native build. Its tools (zig,
# auditwheel) come first: packaging/build-requirements.txt.
# The tests also get the optional `dicom-gpl` extra (both paths of 12-bit JPEG are tested) and `cluster`
# (Ray: `batch --ray` is tested on a two-node local cluster), and the `openvino` extra's onnxruntime in a
# folder of its own: it ships an `onnxruntime` module too, so tests/test_openvino.py puts it first on a
# child's path, as installing the extra instead of `cpu` would.
install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -r packaging/build-requirements.txt
	$(BIN)/python packaging/llama_wheel.py --install $(BIN)/python
	$(BIN)/pip install -q -e '.[cpu,convert,train,dev,dicom-gpl,cluster]'
	test -d $(OPENVINO_ORT)/onnxruntime || $(BIN)/pip install -q --no-deps --target $(OPENVINO_ORT) 'onnxruntime-openvino==1.24.1'

# What the tests run against: dcmtk (reference renderer, dsrdump), qemu-user (an older CPU),
# binutils (objdump reads the AMX kernel), tmux (drives `huatuo tui` as a person would), orthanc (a real PACS for `huatuo send`, started by the
# tests as a plain process; its packaged service is not used), openssl (a test certificate for
# STOW-RS over https), strace (no network system call from ask/batch/doctor), util-linux (unshare:
# doctor's network-less child; setpriv: scanning as an unprivileged user). Needs root on Debian.
system-deps:
	@if ! command -v dcm2pnm >/dev/null 2>&1 || ! command -v dciodvfy >/dev/null 2>&1 || ! command -v qemu-x86_64 >/dev/null 2>&1 \
		|| ! command -v objdump >/dev/null 2>&1 || ! test -x /usr/sbin/Orthanc || ! command -v openssl >/dev/null 2>&1 \
		|| ! command -v strace >/dev/null 2>&1 || ! command -v setpriv >/dev/null 2>&1 || ! command -v unshare >/dev/null 2>&1 \
		|| ! command -v tmux >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools qemu-user binutils orthanc openssl strace util-linux tmux >/dev/null; fi

# synthetic checkpoint -> verified bundle -> one question about a sample CT -> a batch over sample studies
demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/huatuo convert synth $(DEMO)/checkpoint --arch $(ARCH) --vision-layout folder
	$(BIN)/huatuo convert all $(DEMO)/checkpoint $(DEMO)/bundle --quant q4_k_m
	$(BIN)/huatuo ask --model $(DEMO)/bundle --max-tokens 48 "$$($(BIN)/python -m demo.samples scan)" "Is there a pleural effusion?"
	$(BIN)/python -m demo.samples studies $(DEMO)/studies
	$(BIN)/huatuo batch $(DEMO)/studies --out $(DEMO)/batch --model $(DEMO)/bundle -q "Describe the findings." --max-tokens 48 --sr
	@echo "demo done: see $(DEMO)/batch/report.html (a random tiny model: the words are noise, the pipeline is real)"

# the checks alone (seconds; DEVELOPERS.md "Checks"): layer contracts, lint, types
check: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/mypy

# the checks first, then the suite (which also checks README's examples and docs/cli.md against --help)
test: install system-deps
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# the air-gapped artifact (packaging/README.md): dist/huatuo-offline-<version>-linux-x86_64/ and its tarball
package: install
	$(BIN)/python packaging/build_offline.py dist

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache dist
