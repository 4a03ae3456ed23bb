# scopewatch: build, test and demo targets. `make demo` and `make test` are the
# two commands a new user needs (see README.md); both install prerequisites first.
SHELL := /bin/bash
GO ?= go
BIN := bin/scopewatch
DEMO_DIR ?= out/demo
DEMO_SEED ?= 7001
MODEL ?= models/default

export CGO_ENABLED := 1

.PHONY: setup build test test-short demo model bench fuzz vet clean

setup:
	./.ci/setup.sh

build: setup
	$(GO) build -o $(BIN) ./cmd/scopewatch

# The full test suite: real ONNX Runtime, OpenCV, SQLite and mosquitto.
test: setup
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 40m ./...

# Pure-Go packages only (no cgo): quick feedback while editing.
test-short:
	CGO_ENABLED=0 $(GO) test -count=1 ./drift/... ./tuning/... ./internal/synth/... ./feedback/wire/... ./feedback/selection/...

# Generate a synthetic slide set from slides never used in training,
# classify it with the shipped default model and print the summary; then
# count whole fields of four slides and compare their parasitemia with the
# truth.
demo: build
	rm -rf $(DEMO_DIR)
	$(BIN) synth cells --out $(DEMO_DIR)/cells --n 400 --seed $(DEMO_SEED)
	$(BIN) classify --model $(MODEL) --format csv $(DEMO_DIR)/cells > $(DEMO_DIR)/results.csv
	@echo "per-image results: $(DEMO_DIR)/results.csv"
	$(BIN) synth fields --out $(DEMO_DIR)/fields --n 8 --fields-per-slide 2 --seed $(DEMO_SEED)
	$(BIN) fields --model $(MODEL) $(DEMO_DIR)/fields > $(DEMO_DIR)/field-cells.csv
	@echo "per-cell results of the fields: $(DEMO_DIR)/field-cells.csv"

bench: build
	$(BIN) synth cells --out out/bench --n 512 --seed 9001
	$(BIN) bench --model $(MODEL) --data out/bench

# Retrain the default bundle (needs python3-torch; never needed by the product).
model: build
	$(MAKE) -C models/recipe

# Every parser of outside input has a fuzz target; each runs FUZZTIME.
FUZZTIME ?= 30s
FUZZ_TARGETS := \
	./inference/:FuzzDecode ./inference/:FuzzManifest ./inference/:FuzzSafetensors \
	./inference/:FuzzBundleArchive ./drift/:FuzzReadCSV ./drift/:FuzzDecodeBaseline \
	./drift/:FuzzMonitorState ./feedback/wire/:FuzzDecodeSample ./feedback/wire/:FuzzDecodeChunk \
	./feedback/wire/:FuzzDecodeLabel ./feedback/:FuzzCollectorHandle ./internal/config/:FuzzDecode \
	./internal/daemon/:FuzzReadUpload ./cmd/scopewatch/:FuzzParseLabelsCSV \
	./tuning/:FuzzDecodeStudy ./tuning/:FuzzReadFeatures

fuzz: setup
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$fn in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) -parallel 1 $$pkg; \
	done

vet:
	$(GO) vet ./...

clean:
	rm -rf bin out
