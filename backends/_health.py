"""A device's health as the run sees it: in service, or quarantined after repeated faults."""

from __future__ import annotations

import trio

__all__ = ["DeviceHealth"]


class DeviceHealth:
    """Quarantined or not, with a way to wait for either.

    The device client quarantines a device that keeps failing and lifts the
    quarantine when a request succeeds again; the run loop waits on the changes to
    log ``run_suspended`` and ``run_resumed_after_suspend``.
    """

    def __init__(self) -> None:
        self.quarantined = False
        self.reason = ""
        self._changed = trio.Event()

    def quarantine(self, reason: str) -> None:
        self.quarantined, self.reason = True, reason
        self._notify()

    def recover(self) -> None:
        self.quarantined, self.reason = False, ""
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, *, quarantined: bool) -> None:
        """Return once the device's quarantine state is ``quarantined``."""
        while self.quarantined != quarantined:
            await self._changed.wait()
