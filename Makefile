# gpuledger: two commands on a fresh machine.
#   make demo   - virtual environment + a simulated month through the whole pipeline
#   make test   - virtual environment + the whole test suite (starts its own Kafka broker and
#                 S3 server; the S3 server's binary is built once and cached, see scripts/s3.sh)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit venv kafka-jars kafka-up kafka-down s3-build s3-up s3-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/gpuledger demo

kafka-jars:
	bash scripts/kafka.sh jars

kafka-up: kafka-jars
	bash scripts/kafka.sh up

kafka-down:
	bash scripts/kafka.sh down

# eval "$$(make -s s3-up)" sets AWS_ENDPOINT_URL and the credentials in your shell (docs/s3.md)
s3-build:
	@bash scripts/s3.sh build

s3-up: s3-build
	@bash scripts/s3.sh up

s3-down:
	bash scripts/s3.sh down

test: $(STAMP) kafka-jars s3-build
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

# Benchmarks are run one by one; each section of docs/BENCHMARKS.md gives its command.

clean:
	rm -rf $(VENV) gpuledger-data .kafka kafka/target .s3
