# Everything runs from a virtualenv this Makefile builds itself: only Python 3.11+ and make needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test test-rabbitmq unit lint bench chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/farm demo

serve: $(STAMP)
	$(BIN)/farm demo --serve

# The whole suite on Redis, then the delivery guarantees again with RabbitMQ as the broker (a vhost
# of its own on the machine's server; skipped, saying so, where there is none).
AMQP_CORE := tests/core/test_delivery.py tests/social/test_kill.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -p no:cacheprovider --broker amqp -m integration $(AMQP_CORE)

# Every integration test again on RabbitMQ (those about the Redis broker itself skip, saying so);
# the suites that start brokers of their own (chaos: `make chaos BROKER=amqp`) are left out.
test-rabbitmq: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --broker amqp -m integration \
		$(foreach d,chaos hosts sentinel bench browser rabbitmq,--ignore=tests/$(d))

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not integration'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench.enqueue
	$(BIN)/python -m bench.resize
	$(BIN)/python -m bench.fanout
	$(BIN)/python -m bench.push
	$(BIN)/python -m bench.fetch
	$(BIN)/python -m bench.webhooks
	$(BIN)/python -m bench.farm
	$(BIN)/python -m bench.drain
	$(BIN)/python -m bench.brokers

# The farm's chaos suite: real workers killed, stopped and restarted, a broker crashed, then
# every feed entry, push and task accounted for; the last line is the summary (README, "Chaos").
# BROKER=amqp: the same modes with RabbitMQ as the broker (a vhost of each mode's own on the
# machine's server).
BROKER ?= redis
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --broker $(BROKER)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache *.egg-info
