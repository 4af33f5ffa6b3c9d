"""The stream worker's log is redacted like every other command's, after Faust installs its own handlers."""

from __future__ import annotations

import io
import logging

import faust

from streams.cli import redacting_worker


def test_the_worker_s_own_log_handlers_redact_phone_numbers_and_secrets() -> None:
    app = faust.App("nudge-test-logs", broker="memory://", store="memory://")
    worker = redacting_worker(faust.Worker)(app, loglevel="info", quiet=True)
    out = io.StringIO()
    logger = logging.getLogger("nudge-test-logs")
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [logging.StreamHandler(out)]  # what mode leaves: its own handler, no filter
    try:
        worker.on_setup_root_logger(root, logging.INFO)
        logger.warning("sms to +33612345678 with sasl_plain_password=hunter2hunter2")
    finally:
        root.handlers[:] = saved
    text = out.getvalue()
    assert "+33612345678" not in text and "hunter2hunter2" not in text, text
    assert "sms to" in text
