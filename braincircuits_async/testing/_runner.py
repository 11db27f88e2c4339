"""Running an ASGI app on a loopback port with uvicorn, imported only when asked to."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .._exceptions import MissingDependencyError
from ._faults import _InjectedFault
from ._http import ASGIApp

if TYPE_CHECKING:
    import uvicorn

__all__ = ["BackgroundServer", "serve", "serve_in_background", "serve_in_thread"]


class _QuietInjectedFaults(logging.Filter):
    """Drop uvicorn's error log for connections the fake cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _InjectedFault))


@contextlib.contextmanager
def _quiet_injected_faults() -> Iterator[None]:
    logger = logging.getLogger("uvicorn.error")
    quiet = _QuietInjectedFaults()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _make_server(
    app: ASGIApp, *, host: str, port: int, log_level: str, access_log: bool
) -> uvicorn.Server:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError(
            'the loopback fake server needs uvicorn: pip install "braincircuits-async[fake]"'
        ) from exc
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="asyncio",
        # h11 on purpose: its strict Content-Length check is what turns "truncate"
        # into a visible transport error; other protocols would differ.
        http="h11",
        ws="none",
        lifespan="off",
        access_log=access_log,
        log_level=log_level,
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve ``app`` on a loopback port from a background thread; yield its base URL.

    ``port=0`` picks a free port; the URL carries the port actually bound, e.g.
    ``"http://127.0.0.1:53127"``. The server stops when the ``with`` block ends::

        with serve_in_thread(FakeBrainCircuits()) as base_url:
            ...  # httpx.AsyncClient(base_url=base_url), or your own client

    Give ``host`` as an IP address: a name such as ``localhost`` may bind several
    sockets, each on its own free port. Connections the fake cuts on purpose are
    not logged; other uvicorn messages at ``log_level`` and above are.

    Raises:
        ImportError: uvicorn is not installed.
        OSError: the server did not start (e.g. the port is taken) within
            ``startup_timeout`` seconds.
    """
    server = _make_server(app, host=host, port=port, log_level=log_level, access_log=False)
    thread = threading.Thread(target=server.run, name="braincircuits-fake-server", daemon=True)
    with _quiet_injected_faults():
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(startup_timeout)
                raise OSError(
                    f"the fake server did not start on {host}:{port} (see the uvicorn log)"
                )
            time.sleep(0.002)
        try:
            yield _base_url(server)
        finally:
            server.should_exit = True
            thread.join()


class BackgroundServer:
    """An app served on loopback from a background thread until :meth:`stop`.

    What :func:`serve_in_background` returns: for a notebook session, where a
    ``with`` block cannot span cells. Also a context manager.
    """

    def __init__(self, app: ASGIApp, **options: object) -> None:
        self.app = app
        self._serving = serve_in_thread(app, **options)  # type: ignore[arg-type]
        #: The base URL, e.g. ``"http://127.0.0.1:53127"``.
        self.url: str = self._serving.__enter__()
        self._stopped = False

    @property
    def environment(self) -> dict[str, str]:
        """The environment variables that point a client (or the CLI) at this server.

        ``BRAINCIRCUITS_URL``, and the tokens the fake wants (its test tokens, not
        secrets): ``os.environ.update(server.environment)``.
        """
        env = {"BRAINCIRCUITS_URL": self.url}
        token = getattr(self.app, "token", None)
        cave_token = getattr(self.app, "cave_token", None)
        if isinstance(token, str):
            env["BRAINCIRCUITS_TOKEN"] = token
        if isinstance(cave_token, str):
            env["BRAINCIRCUITS_CAVE_TOKEN"] = cave_token
        return env

    def stop(self) -> None:
        """Stop serving and wait for the thread (twice is harmless)."""
        if not self._stopped:
            self._stopped = True
            self._serving.__exit__(None, None, None)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"<BackgroundServer {self.url} {state}>"


def serve_in_background(app: ASGIApp, **options: object) -> BackgroundServer:
    """Serve ``app`` on a loopback port from a background thread, until ``.stop()``.

    :func:`serve_in_thread` for a notebook, where one ``with`` block cannot span
    cells::

        server = serve_in_background(FakeBrainCircuits())
        os.environ.update(server.environment)   # BRAINCIRCUITS_URL and the tokens
        ...
        server.stop()

    ``options`` are :func:`serve_in_thread`'s (``host``, ``port``, ``log_level``).
    """
    return BackgroundServer(app, **options)


def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (Ctrl+C); blocks.

    For a fake server in its own terminal, e.g. to point a notebook at::

        serve(FakeBrainCircuits(latency=0.05))

    Raises:
        ImportError: uvicorn is not installed.
    """
    server = _make_server(app, host=host, port=port, log_level=log_level, access_log=access_log)
    with _quiet_injected_faults():
        server.run()


def _base_url(server: uvicorn.Server) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
