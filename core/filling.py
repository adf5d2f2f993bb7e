"""How ``solve_many`` decides when the next problem starts.

A fixed number of problems in flight fits a search whose width is its demand at every
moment (self-consistency's N samples). Many are not like that: DeepConf runs N/4 warm-up
traces before its online ones, a step search holds no rows while its paths are scored, and
a search's samples finish at different times. Sized for their widest moment, they leave
the engine's rows idle for the rest.

:class:`Filling` starts ``floor`` problems at once and keeps that many in flight; when
the engine's idle rows, less those promised to problems that have started but not yet
asked for any, hold one more problem at its full width, it starts one more, up to
``ceiling``. It looks again whenever rows may have come free: a request came back, a
problem finished, or a problem's first request asked for fewer rows than its width
(DeepConf's warm-up asks N/4). A caller who names a number gets exactly that many
(``floor == ceiling``).

Rows are not idle for want of problems while paths wait for a verifier: a step search
holds none while its paths are scored, so a slow verifier (the probe, a PRM) leaves the
engine idle however many problems are in flight, and each more only lengthens its queue
and pushes the paths it has read out of its cache. So beyond ``floor`` a problem starts
only while no path waits for a verifier (``verifying``). Measured without this
(``benchmarks/filling_verifier.py``): DVTS@8 with the probe on vLLM on 2 cores went from
32 problems in flight to 51 in five minutes while the paths waiting for the verifier grew
to 282; with it, 32 throughout.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from attrs import define, field

from .log import get_logger


@define
class Filling:
    """One ``solve_many`` call's admission of problems, used in the runtime's event loop:
    each problem awaits :meth:`enter` before it starts and calls :meth:`leave` when done;
    the runtime passes the engine's sequence counts to :meth:`engine_changed`."""

    floor: int
    """Problems kept in flight while any wait."""
    ceiling: int
    """Problems in flight at most, counting those started for idle rows."""
    width: int
    """Sequences one problem has in flight at most (the search's width)."""
    spare: Callable[[], int] | None = None
    """The engine's rows with no sequence to decode right now; None: the engine does not
    say, so no more than ``floor`` start."""
    verifying: Callable[[], int] | None = None
    """Paths sent to a verifier and not yet scored; None: not known (no check)."""
    running: int = 0
    _unasked: int = 0
    """Started problems whose first request has not reached the engine: each counts as
    ``width`` rows about to be asked for, or a problem just started would look like idle
    rows. From its first request on, a problem holds the rows it asks for: DeepConf's
    warm-up asks N/4 of them, and the rest are idle until its online traces start."""
    _waiting: collections.deque[asyncio.Future[None]] = field(factory=collections.deque)

    async def enter(self) -> None:
        """Wait for this problem's turn (in order of arrival)."""
        if not self._waiting and self._room():
            self._start()
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # its turn came as it was cancelled
                self.leave(asked=False)
            raise

    def leave(self, asked: bool = True) -> None:
        """A problem finished (or failed): the next may start. ``asked``: whether it made
        any request (one that made none still holds its promise)."""
        self.running -= 1
        if not asked:
            self._unasked = max(0, self._unasked - 1)
        self.wake()

    def engine_changed(self, sequences: int, opening: bool = False) -> None:
        """The engine took (``sequences`` > 0) or gave back (< 0) that many sequences,
        or (0) the verifiers scored the last path waiting for them; ``opening``: the
        request is its problem's first."""
        if opening:
            self._unasked = max(0, self._unasked - 1)
        if opening or sequences <= 0:
            self.wake()

    def wake(self) -> None:
        """Start whoever may start now."""
        while self._waiting:
            if self._waiting[0].cancelled():
                self._waiting.popleft()
                continue
            if not self._room():
                return
            self._start()
            self._waiting.popleft().set_result(None)

    def _start(self) -> None:
        self.running += 1
        self._unasked += 1
        if self.running > self.floor:
            get_logger().debug("one more problem for idle rows", running=self.running, floor=self.floor)

    def _room(self) -> bool:
        if self.running < self.floor:
            return True
        if self.running >= self.ceiling or self.spare is None:
            return False
        if self.verifying is not None and self.verifying():
            return False  # the rows wait for the verifier, not for problems
        return self.spare() - self._unasked * self.width >= self.width
