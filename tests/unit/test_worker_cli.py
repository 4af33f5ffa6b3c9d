"""`nudge worker`'s Faust worker: what it does to the process's logging."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import faust
import pytest

from streams.cli import worker


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield root
    finally:
        root.setLevel(level)
        root.handlers = handlers


@pytest.mark.parametrize(("loglevel", "level"), [("warn", logging.WARNING), ("error", logging.ERROR)])
def test_a_quiet_worker_leaves_debug_records_unbuilt(root: logging.Logger, loglevel: str, level: int) -> None:
    root.setLevel(level)
    root.handlers = [logging.NullHandler()]  # what mode leaves: its own handler
    built = worker(faust.App("test-worker-cli"), loglevel)
    built.on_setup_root_logger(root, level)  # mode's hook, called as it sets up logging
    assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    assert root.level == level
    assert len(root.handlers) == 1, "a handler that sees every record was added"


def test_the_worker_s_own_log_handlers_redact_phone_numbers_and_secrets(root: logging.Logger) -> None:
    out = io.StringIO()
    root.setLevel(logging.INFO)
    root.handlers = [logging.StreamHandler(out)]  # what mode leaves: its own handler, no filter
    built = worker(faust.App("test-worker-cli"), "info")
    built.on_setup_root_logger(root, logging.INFO)
    logging.getLogger("test-worker-cli").warning("sms to +33612345678 with sasl_plain_password=hunter2hunter2")
    text = out.getvalue()
    assert "+33612345678" not in text and "hunter2hunter2" not in text, text
    assert "sms to" in text
