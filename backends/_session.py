"""One connection to a device: one reader task, one locked writer, one request in flight.

``open_session(stream)`` owns its reader task (an async context manager): the reader
feeds every byte to the sans-IO ``FrameDecoder`` and routes each decoded frame by
sequence number to the request waiting for it. ``Session.request`` sends a request
and waits for its reply under a per-attempt deadline; on a timeout, or on a garbled
frame while it waits, it resends the identical bytes (same seq), so the device
replays its cached reply instead of driving the ring twice (docs/protocol.md §4).
Replies with another seq or trial id are stale and dropped, and so are copies of
a reply that arrive after the first. Faults are named exceptions: LinkLost (the
link broke or the retries ran out), DeviceRefused (an ERROR reply),
DeviceDataError (a reply of the wrong type), DeviceMismatch (a frame of another
protocol version); each names the request it ended in ``seq`` and ``trial_id``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Iterator

import trio

from pgt.backends._messages import ErrorCode, ErrorReply, Message, MsgType
from pgt.backends._protocol import ReservoirError
from pgt.backends._wire import Frame, FrameDecoder, ProtocolError, VersionError, encode_frame

__all__ = ["DeviceDataError", "DeviceMismatch", "DeviceRefused", "LinkLost", "Session",
           "open_session", "single_errors"]


class DeviceDataError(ReservoirError):
    """A reply that parses but is not what was asked for (type, shape, resolution)."""


class LinkLost(ReservoirError):
    """The link broke (read or write failed, peer closed) or a request went unanswered."""


class DeviceMismatch(ReservoirError):
    """The device is not the one we verified: another protocol version, identity or size."""


class DeviceRefused(ReservoirError):
    """The device answered a request with ERROR; ``code`` says why."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"device refused the request: {code.name}" + (f" ({text})" if text else ""))
        self.code = code


class _Waiter:
    """The request in flight: what reply it expects and where the reader puts it."""

    def __init__(self, seq: int, trial_id: int, reply_type: MsgType) -> None:
        self.seq, self.trial_id, self.reply_type = seq, trial_id, reply_type
        self.send, self.receive = trio.open_memory_channel[Frame | ProtocolError | None](8)


class Session:
    """A verified link's request/reply machinery. Use through ``open_session``."""

    def __init__(self, stream: trio.abc.Stream, log, *, retries: int = 3) -> None:
        self._stream = stream
        self._log = log
        self._retries = retries
        self._decoder = FrameDecoder()
        self._write_lock = trio.Lock()
        self._request_lock = trio.Lock()   # one request in flight (protocol §4)
        self._waiter: _Waiter | None = None
        self._seq = random.getrandbits(16)
        self.broken: BaseException | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.garbled = 0
        self.stale = 0
        self.last_attempts = 0   # sends of the last request (1: answered at once)

    async def _reader(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                data = await self._stream.receive_some()
                if not data:
                    raise trio.BrokenResourceError("device closed the link")
                self.bytes_received += len(data)
                for item in self._decoder.feed(data):
                    self._route(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = exc
            if self._waiter is not None:
                _put(self._waiter, None)   # wake the request: link lost (else its deadline will)

    def _route(self, item: Frame | ProtocolError) -> None:
        waiter = self._waiter
        if isinstance(item, ProtocolError):
            self.garbled += 1
            seq, trial_id = (None, None) if waiter is None else (waiter.seq, waiter.trial_id)
            self._log.debug("device_garbled_frame", error=str(item), seq=seq, trial_id=trial_id)
            # A frame of another version is no transient fault; anything else is
            # noise that the resend recovers without waiting for the deadline.
            if waiter is not None:
                _put(waiter, item)
            return
        if waiter is None or (item.seq, item.trial_id) != (waiter.seq, waiter.trial_id):
            self.stale += 1
            self._log.debug("device_stale_reply", seq=item.seq, trial_id=item.trial_id)
            return
        _put(waiter, item)

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise LinkLost(f"link write failed: {exc}") from None
            self.bytes_sent += len(data)

    async def request(self, message: Message, *, timeout: float, trial_id: int = 0) -> Message:
        """Send ``message`` and return the device's reply (not ERROR).

        Each attempt waits ``timeout`` seconds; a retry resends the same bytes. Raises
        LinkLost (link broken, or no valid reply after the retries), DeviceRefused,
        DeviceDataError (a reply of another type), DeviceMismatch (reply of another
        protocol version); the error's ``seq`` and ``trial_id`` name this request.
        """
        async with self._request_lock:
            self._seq = (self._seq + 1) & 0xFFFF
            waiter = _Waiter(self._seq, trial_id, MsgType(message.TYPE | 0x80))
            frame = encode_frame(message, seq=waiter.seq, trial_id=trial_id)
            self._waiter = waiter
            try:
                return await self._attempts(message, frame, waiter, timeout)
            except ReservoirError as exc:
                exc.seq, exc.trial_id = waiter.seq, trial_id   # logged with the device fault
                raise
            finally:
                self._waiter = None
                self._drop_copies(waiter)

    def _drop_copies(self, waiter: _Waiter) -> None:
        """Frames still queued for a finished request are further copies: stale, logged."""
        while True:
            try:
                item = waiter.receive.receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(item, Frame):
                self.stale += 1
                self._log.debug("device_stale_reply", seq=item.seq, trial_id=item.trial_id)

    async def _attempts(self, message: Message, frame: bytes, waiter: _Waiter,
                        timeout: float) -> Message:
        # A timeout may mean a dead device: at most ``retries`` resends. A garbled
        # reply proves the device alive, so it earns a few more before we give up.
        timeouts = garbles = 0
        reason = "timeout"
        while timeouts <= self._retries and garbles <= 3 * self._retries:
            if timeouts or garbles:
                self._log.info("device_retry", request=message.TYPE.name, seq=waiter.seq,
                               trial_id=waiter.trial_id, attempt=timeouts + garbles,
                               reason=reason)
            if self.broken is not None:
                raise LinkLost(f"link lost: {self.broken}")
            await self._write(frame)
            self.last_attempts = timeouts + garbles + 1
            reason = "timeout"
            with trio.move_on_after(timeout):
                reply = self._settle(await waiter.receive.receive())
                while reply is None:   # garbled: let the burst end, then resend at once
                    reason = "garbled reply"
                    await trio.sleep(0.002)
                    try:
                        reply = self._settle(waiter.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                if reply is not None:
                    return _accept(reply.message, waiter.reply_type)
            if reason == "timeout":
                timeouts += 1
            else:
                garbles += 1
        raise LinkLost(f"no valid reply to {message.TYPE.name} seq {waiter.seq} after "
                       f"{timeouts + garbles} attempts ({timeouts} timed out after "
                       f"{timeout * 1000:.0f} ms)")

    def _settle(self, item: Frame | ProtocolError | None) -> Frame | None:
        """The reply frame, or None for a garbled frame; raises for a lost link."""
        if item is None:
            raise LinkLost(f"link lost: {self.broken}")
        if isinstance(item, VersionError):
            raise DeviceMismatch(str(item))
        return None if isinstance(item, ProtocolError) else item

    async def send_raw(self, data: bytes) -> None:
        """Bytes outside any request (the 0x00 that flushes a partial frame)."""
        await self._write(data)


def _put(waiter: _Waiter, item: Frame | ProtocolError | None) -> None:
    try:
        waiter.send.send_nowait(item)
    except trio.WouldBlock:
        pass   # a burst of garbage while the request is already resending


def _accept(message: Message, reply_type: MsgType) -> Message:
    """The reply to a request (seq and trial id matched); ERROR and other types raise.

    A reply of another type is a device fault (protocol §4): resending would only
    replay it, so the caller reopens the link and sends the request anew.
    """
    if isinstance(message, ErrorReply):
        raise DeviceRefused(message.code, message.text)
    if message.TYPE != reply_type:
        raise DeviceDataError(f"device answered {MsgType(reply_type & 0x7F).name} with "
                              f"{message.TYPE.name}, expected {reply_type.name}")
    return message


@contextlib.asynccontextmanager
async def open_session(stream: trio.abc.Stream, log, *, retries: int = 3) -> AsyncIterator[Session]:
    """A Session on ``stream`` whose reader task lives as long as the ``async with``.

    The stream is closed on exit.
    """
    session = Session(stream, log, retries=retries)
    with single_errors():
        async with stream, trio.open_nursery() as nursery:
            await nursery.start(session._reader)
            try:
                yield session
            finally:
                nursery.cancel_scope.cancel()


@contextlib.contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise a nursery's group of one error as that error, so callers can name it.

    Our nurseries hold one background task that does not fail (the reader, the
    worker after it started), so a group of one carries the body's own error.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
