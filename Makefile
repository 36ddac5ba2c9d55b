.PHONY: all test lint services

all: lint test

test:
	scripts/test

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

services:
	scripts/services
