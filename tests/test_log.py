"""The library never configures logging and never writes to an embedding app's stdout."""

import json
import subprocess
import sys


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_unconfigured_logs_go_through_stdlib_logging_and_never_to_stdout():
    result = python(
        "from reason.log import get_logger\n"
        "log = get_logger()\n"
        "log.debug('hidden-debug'); log.info('hidden-info', a=1); log.warning('shown', a=2)\n"
    )
    assert result.returncode == 0 and result.stdout == ""
    assert "event='shown' a=2" in result.stderr and "hidden" not in result.stderr


def test_the_applications_stdlib_settings_apply():
    result = python(
        "import logging; logging.basicConfig(level=logging.DEBUG, format='%(name)s|%(levelname)s|%(message)s')\n"
        "from reason.log import get_logger\n"
        "get_logger().debug('visible', a=1)\n"
    )
    assert "reason|DEBUG|event='visible' a=1" in result.stderr and result.stdout == ""


def test_the_applications_structlog_configuration_wins_even_if_made_after_import():
    result = python(
        "from reason.log import get_logger\n"
        "log = get_logger()\n"
        "import structlog; structlog.configure(processors=[structlog.processors.JSONRenderer()])\n"
        "log.info('mine', a=1)\n"
    )
    assert json.loads(result.stdout) == {"a": 1, "event": "mine"}


def test_the_cli_configuration_logs_json_to_stderr_at_its_level():
    result = python(
        "from reason import log\n"
        "log.configure('info', json_logs=True)\n"
        "logger = log.get_logger()\n"
        "logger.debug('below-level'); logger.info('at-level', a=1)\n"
    )
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["event"] == "at-level" and record["level"] == "info" and record["a"] == 1 and result.stdout == ""


def test_the_cli_configuration_writes_to_the_stderr_of_the_moment():
    """A swapped and closed stderr (a test's capture, an app embedding the CLI) must not
    make the next log line raise: on an engine thread that ended the engine."""
    result = python(
        "import io, sys\n"
        "from reason import log\n"
        "first = sys.stderr = io.StringIO()\n"
        "log.configure('info', json_logs=True)\n"
        "log.get_logger().info('one')\n"
        "sys.stderr = sys.__stderr__; first.close()\n"
        "log.get_logger().info('two')\n"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr)["event"] == "two"
