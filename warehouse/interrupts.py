"""Ctrl-C and SIGTERM: how a stop request is raised, recognised and kept out of the catalog's bookkeeping.

Python raises a stop request as KeyboardInterrupt wherever the main thread happens to be, and a library
running native code at that moment may report it as an error of its own: DuckDB's `RuntimeError: Query
interrupted`, or a `SystemError` from a Numba kernel or another C extension that returned while the
KeyboardInterrupt was pending, each with the KeyboardInterrupt as its cause. `reason` recognises all of
them, and, once a signal has reached `raised`'s handler, any error at all (a clean-up that failed on a
half-done call, a library that dropped the cause): every command then ends with the same one line and an
ingest records its run as interrupted, never failed. The handler also cancels the queries of the
connections given to `cancel_on_interrupt` (readers'), so that the process can end. Bookkeeping that
must not stop half-way (starting a run, rolling a transaction back, recording how a run ended) runs
inside `deferred`, which raises a signal that arrives meanwhile when the block ends. A handler that
raises inside a C library's callback into Python (ctypes; Numba's compiler cache calls back so while it
compiles) has its exception printed and dropped by that library, so long loops also call `check` at each
step. Signals reach Python in the main thread only: in other threads these do nothing.
"""

from __future__ import annotations

import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

import duckdb

CTRL_C = "stopped by the user (Ctrl-C)"
SIGTERM = "stopped by SIGTERM"
_SIGNALS = {signal.SIGINT: CTRL_C, signal.SIGTERM: SIGTERM}
_received: list[str] = []  # why, for each signal `raised`'s handler took in the outermost block open
_depth = 0  # `raised` blocks open
_cancellable: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()  # see cancel_on_interrupt
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Interrupted(KeyboardInterrupt):
    """A stop request raised like Ctrl-C; its text says which signal it was (CTRL_C or SIGTERM)."""


def reason(exc: BaseException) -> str | None:
    """Why `exc` ended the work, when a stop request did (CTRL_C, SIGTERM); None when it did not. An
    interrupt is the exception itself, one in its chain of causes and contexts (a library's wrapping of
    it), or a signal `raised` took before `exc` escaped."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            return str(current) or CTRL_C
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
    return _received[0] if _received else None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def cancel_on_interrupt(con: duckdb.DuckDBPyConnection) -> None:
    """Have a stop request that `raised` takes cancel whatever `con` runs. DuckDB reports the interrupt to
    the thread that asked for the query only, and the query's tasks on DuckDB's own threads may run on to
    their end, holding up the connection's next statement and its close: after Ctrl-C a long `actwh sql`
    did not exit. Not for a writer's connection: a commit its other thread runs must end whole."""
    _cancellable.add(con)


def _raise(signum: int, frame: FrameType | None) -> None:
    why = _SIGNALS[signum]
    _received.append(why)
    for con in list(_cancellable):
        with suppress(duckdb.ConnectionException):  # closed
            con.interrupt()
    raise Interrupted(why)


def check() -> None:
    """Raise Interrupted when `raised`'s handler took a signal in the block open, whether or not its
    exception reached the caller: a library that called back into Python may have dropped it."""
    if _received and _depth and _main_thread():
        raise Interrupted(_received[0])


@contextmanager
def raised() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted for the block and are remembered for `reason` (a signal the
    process ignores, as a background job ignores SIGINT, stays ignored)."""
    global _depth
    if not _main_thread():
        yield
        return
    previous = _install(_raise)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        _restore(previous)
        if _depth == 0:  # a later error in this process is not this stop request's doing
            _received.clear()


@contextmanager
def deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held for the block: the first that arrives is handled as before once it ends
    (raised then, when the handler raises), so the block runs to its end."""
    if not _main_thread():
        yield
        return
    held: list[int] = []
    ended = False

    def hold(signum: int, frame: FrameType | None) -> None:
        if ended:  # arrived while the handlers were being put back: handled as if they were
            _handle(previous, signum, frame)
        else:
            held.append(signum)

    previous = _install(hold)
    try:
        yield
    finally:
        ended = True
        _restore(previous)
        if held:
            _handle(previous, held[0], None)


def _install(handler: Callable[[int, FrameType | None], None]) -> dict[int, Handler]:
    """`handler` for each of the signals the process does not ignore; returns the handlers it replaced."""
    previous: dict[int, Handler] = {}
    for signum in _SIGNALS:
        current = signal.getsignal(signum)
        if current is not signal.SIG_IGN:
            previous[signum] = current
            signal.signal(signum, handler)
    return previous


def _restore(previous: dict[int, Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _handle(handlers: dict[int, Handler], signum: int, frame: FrameType | None) -> None:
    """Do what `handlers` does with `signum`: call it, or for the default action raise it as Interrupted
    (SIGTERM's default would end the process with no line and the run left 'running')."""
    handler = handlers.get(signum)
    if callable(handler):
        handler(signum, frame)
    elif handler is not signal.SIG_IGN:
        raise Interrupted(_SIGNALS[signum])
