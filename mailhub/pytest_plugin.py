"""pytest fixtures: one mailhub shared by the whole run, a sandbox per test (issue 15).

Opt in with ``-p mailhub.pytest_plugin`` (or ``pytest_plugins = ["mailhub.pytest_plugin"]`` in
the top ``conftest.py``). Then::

    def test_welcome_mail(mailhub_sandbox):
        my_app.sign_up("new@example.com", smtp=mailhub_sandbox.smtp_settings())
        assert mailhub_sandbox.wait_for_message(to="new@example.com").subject == "Welcome"

- ``mailhub_sandbox``: a new sandbox for each test (``mailhub.sandboxclient.SandboxClient``),
  named after the test and deleted after it: its mail, waits and fault rules are its own, so
  tests may run in parallel against one server.
- ``mailhub_worker_sandbox``: one sandbox for the whole session of this process (each
  pytest-xdist worker gets its own).
- ``mailhub_url``: the shared server's web API. ``--mailhub-url URL`` (or ``MAILHUB_URL``) uses
  a server already running (the dev stack, a container); otherwise one is started in this run:
  under pytest-xdist by the controller, once, for every worker (``workerinput``), else by the
  process itself on first use. It runs ``mailhub.testing``'s in-process server (free ports on
  127.0.0.1, a temporary directory) until the run ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from mailhub.sandboxclient import SandboxClient
from mailhub.testing import running

ENV = "MAILHUB_URL"
_KEY = "mailhub_url"
# The server deletes a sandbox this long after it was made, should the run die before its
# clean-up (a killed worker): longer than any test or session should take.
TEST_TTL = 6 * 3600.0
WORKER_TTL = 24 * 3600.0


def pytest_addoption(parser: Any) -> None:
    parser.getgroup("mailhub").addoption(
        "--mailhub-url",
        default=None,
        help=f"web API of a running mailhub for the sandbox fixtures (default: ${ENV}, else "
        "one started for this run)",
    )


class _SharedServer:
    """The run's own server, started on first need and stopped at the end of the run."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.url: str | None = None

    def start(self) -> str:
        if self.url is None:
            hub = self._stack.enter_context(running())
            self.url = hub.api_url
        return self.url

    def stop(self) -> None:
        self._stack.close()


def _given_url(config: Any) -> str | None:
    return config.getoption("mailhub_url") or os.environ.get(ENV) or None


def pytest_configure(config: Any) -> None:
    config._mailhub_server = _SharedServer()


def pytest_unconfigure(config: Any) -> None:
    server = getattr(config, "_mailhub_server", None)
    if server is not None:
        server.stop()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller, before each worker starts: every worker gets the URL of
    one server (started here, once) so that their sandboxes share it."""
    config = node.config
    url = _given_url(config) or config._mailhub_server.start()
    node.workerinput[_KEY] = url


@pytest.fixture(scope="session")
def mailhub_url(request: Any) -> str:
    """The web API of the server the sandboxes live on."""
    config = request.config
    given = _given_url(config)
    if given:
        return given
    worker = getattr(config, "workerinput", None)
    if worker is not None and _KEY in worker:
        return str(worker[_KEY])
    return str(config._mailhub_server.start())


@pytest.fixture(scope="session")
def mailhub_worker_sandbox(mailhub_url: str, request: Any) -> Iterator[SandboxClient]:
    """One sandbox for this process's whole session (per pytest-xdist worker)."""
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    box = SandboxClient.create(mailhub_url, name=f"pytest worker {worker}", ttl=WORKER_TTL)
    yield box
    box.delete()


@pytest.fixture
def mailhub_sandbox(mailhub_url: str, request: Any) -> Iterator[SandboxClient]:
    """A sandbox of this test's own, deleted after it."""
    box = SandboxClient.create(mailhub_url, name=request.node.nodeid[:200], ttl=TEST_TTL)
    yield box
    box.delete()
