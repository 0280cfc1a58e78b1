"""The firmware core under real MicroPython answers byte for byte as under CPython.

Opt-in (slow): needs node and the MicroPython WebAssembly port from npm, e.g.

    npm install --prefix /tmp/upy @micropython/micropython-webassembly-pyscript
    PGT_MICROPYTHON_MJS=/tmp/upy/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs \
        .venv/bin/pytest -m slow tests/tools/test_firmware_micropython.py
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from pgt.backends._messages import Configure, Forward
from pgt.backends._wire import encode_frame
from tests.backends.test_protocol_agreement import (CONFIGURE_CASES, FORWARD_CASES, NOT_REQUESTS,
                                                   REFUSALS, frame)
from tests.backends.test_wire import GOLDEN
from tests.tools.test_firmware_core import FIRMWARE, codes, make, session_stream

pytestmark = pytest.mark.slow

RUNNER = """
import { loadMicroPython } from "%s";
import fs from "fs";
const mp = await loadMicroPython({heapsize: 8 << 20, stdout: (l) => process.stdout.write(l + "\\n")});
for (const f of ["pgt_core.py", "main.py", "cases.py"]) mp.FS.writeFile("/" + f, fs.readFileSync(f));
try { mp.runPython(fs.readFileSync("check.py", "utf8")); }
catch (e) { console.log("PYERROR " + e.message); process.exit(1); }
"""

CHECK = """
import binascii, sys
import pgt_core
from cases import CASES

class Ring:   # the FakeRing of test_firmware_core, in MicroPython's subset
    def __init__(self, n, cause):
        self.amp, self.level, self.cause = [0] * n, 2048, cause
    def reset_cause(self):
        return self.cause
    def _round_trip(self):
        a = self.amp
        self.amp = [min(4095, a[j - 1] // 2 + self.level * (j + 1) // 32) for j in range(len(a))]
    def drive(self, code):
        self.level = code
        self._round_trip()
    def wait(self, n):
        for _ in range(min(n, 40)):
            self._round_trip()
    def sample(self, slots):
        return [self.amp[j] for j in slots]
    def park(self):
        self.level = 2048

print(sys.implementation.name)
compile(open("main.py").read(), "main.py", "exec")
for name, stream, expected in CASES:
    stream, expected = binascii.unhexlify(stream), binascii.unhexlify(expected)
    for step in (len(stream), 1, 7):
        core = pgt_core.Core(Ring(24, 2), 16, 24, 64, "ring-fw 0.3")
        got = b"".join(bytes(r) for i in range(0, len(stream), step) for r in core.feed(stream[i:i + step]))
        print(name, step, "OK" if got == expected else "MISMATCH")
"""


def test_the_core_answers_under_micropython_as_under_cpython(tmp_path):
    mjs, node = os.environ.get("PGT_MICROPYTHON_MJS"), shutil.which("node")
    if not (mjs and node and os.path.exists(mjs)):
        pytest.skip("set PGT_MICROPYTHON_MJS to the MicroPython WebAssembly port's micropython.mjs")
    config = encode_frame(Configure(steps=range(16), nodes=range(24), bits=16, settle=3), seq=2)
    forward = encode_frame(Forward(codes(np.random.default_rng(5), 64, 16)), seq=3)
    streams = {
        "session": session_stream(),
        "golden": b"".join(bytes.fromhex(wire) for _, wire in GOLDEN),
        "batch": config + forward + forward,
        # the refusals of docs/protocol.md §1.2, §3.2, §3.3, each followed by a retry
        "refusals": b"".join(2 * wire for wire in (
            [frame(t, p) for t, p in NOT_REQUESTS] + list(REFUSALS.values())
            + [frame(0x03, p) for p, _, _ in FORWARD_CASES.values()] + [config]
            + [frame(0x02, p) for p, _ in CONFIGURE_CASES.values()])),
    }
    cases = []
    for name, stream in streams.items():
        core, _ = make(cause=2)
        cases.append((name, stream.hex(), b"".join(bytes(r) for r in core.feed(stream)).hex()))
    for name in ("pgt_core.py", "main.py"):
        shutil.copy(FIRMWARE / name, tmp_path / name)
    (tmp_path / "cases.py").write_text(f"CASES = {cases!r}\n")
    (tmp_path / "check.py").write_text(CHECK)
    (tmp_path / "run.mjs").write_text(RUNNER % mjs)
    out = subprocess.run([node, "run.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.split("\n") if line]
    assert lines[:1] == ["micropython"], out.stdout + out.stderr
    assert len(lines) == 1 + 3 * len(cases) and all(line.endswith(" OK") for line in lines[1:]), out.stdout
