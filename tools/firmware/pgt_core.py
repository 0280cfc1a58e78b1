"""The device side of the pgt wire protocol (docs/protocol.md, version 1), pure.

Bytes in, reply bytes out: ``Core.feed(data)`` takes bytes from the link in any
split and returns the reply frames to send, in order. Everything physical goes
through the ``hw`` object handed to ``Core``:

    hw.drive(dac_code)   apply this DAC code to the ring's drive from now on
    hw.wait(round_trips) let that many round trips of the ring pass
    hw.sample(slots)     read the detector at these virtual-node slots (ascending)
                         of the current round trip; one ADC count in
                         [0, adc_full] per slot
    hw.park()            zero drive: no input reaches the ring
    hw.reset_cause()     why the board last restarted, as a protocol code 0..4

An exception raised by ``hw`` during a FORWARD parks the ring and is answered with
ERROR HARDWARE_FAULT. The module runs unchanged under MicroPython and CPython: no
dataclasses, typing, f-strings or numpy; COBS and CRC-16 are written out here
because MicroPython has neither.
"""

try:
    import ustruct as struct
except ImportError:
    import struct

PROTOCOL_VERSION = 1

HELLO = 0x01
CONFIGURE = 0x02
FORWARD = 0x03
PING = 0x04
SAFE = 0x05
REPLY = 0x80            # a reply's type is its request's with bit 7 set
ERROR = 0xFF

BAD_VERSION = 1
UNKNOWN_TYPE = 2
BAD_PAYLOAD = 3
BAD_CONFIG = 4
BATCH_TOO_LARGE = 5
SHAPE_MISMATCH = 6
PARKED = 7
HARDWARE_FAULT = 8

HEADER_SIZE = 10        # version u8, type u8, seq u16, trial_id u32, length u16
MIN_FRAME = 12          # header + CRC, before COBS
MAX_ENCODED_FRAME = 65806
MAX_PAYLOAD = 0xFFFF
INDEX_MAX = 0xFFFE      # step and node indices 0 ... 65534
INPUT_CODE_MAX = 32767
FEATURE_BITS = (8, 12, 16)
FIRMWARE_ID_MAX = 64
ERROR_TEXT_MAX = 128


# --- CRC-16/CCITT-FALSE and COBS -------------------------------------------------

def _crc_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection (b"123456789": 0x29B1)."""
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def cobs_encode(data):
    """COBS of ``data`` without the delimiter, byte for byte as Python's ``cobs.cobs``."""
    out = bytearray(len(data) + len(data) // 254 + 1)
    code_at, code, j, n = 0, 1, 1, len(data)
    for i in range(n):
        byte = data[i]
        if byte:
            out[j] = byte
            j += 1
            code += 1
        if not byte or (code == 0xFF and i + 1 < n):
            out[code_at] = code
            code_at, code = j, 1
            j += 1
    out[code_at] = code
    return out[:j] if j < len(out) else out


def cobs_decode(data):
    """The bytes ``data`` (no delimiter) stands for; ValueError when it is not COBS."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            raise ValueError("bad COBS")
        i += 1
        while i < end:
            if not data[i]:
                raise ValueError("bad COBS")
            out.append(data[i])
            i += 1
        if i < n and code != 0xFF:
            out.append(0)
    return out


def encode_frame(msg_type, seq, trial_id, payload):
    """The wire bytes of one frame, delimiter included."""
    body = bytearray(HEADER_SIZE + len(payload) + 2)
    struct.pack_into("<BBHIH", body, 0, PROTOCOL_VERSION, msg_type, seq, trial_id, len(payload))
    body[HEADER_SIZE:HEADER_SIZE + len(payload)] = payload
    crc = crc16(memoryview(body)[:HEADER_SIZE + len(payload)])
    body[-2] = crc & 0xFF
    body[-1] = crc >> 8
    out = cobs_encode(body)
    out.append(0)
    return out


# --- numbers ----------------------------------------------------------------------

def rescale(value, src_full, dst_full):
    """rint(dst_full * clip(value / src_full, 0, 1)), ties to even, in integers."""
    if value <= 0:
        return 0
    if value >= src_full:
        return dst_full
    q, r = divmod(value * dst_full, src_full)
    if 2 * r > src_full or (2 * r == src_full and q & 1):
        q += 1
    return q


def dac_code(input_code, dac_bits):
    """The DAC code of an input code in [-32767, 32767]: -1 -> 0, 0 -> mid, +1 -> full."""
    return rescale(input_code + INPUT_CODE_MAX, 2 * INPUT_CODE_MAX, (1 << dac_bits) - 1)


def _u16(buf, at):
    return buf[at] | buf[at + 1] << 8


def _mask_top(buf, start, end):
    """The highest index set in the mask buf[start:end], or -1 when none is."""
    for k in range(end - 1, start - 1, -1):
        byte = buf[k]
        if byte:
            bit = 7
            while not byte >> bit:
                bit -= 1
            return 8 * (k - start) + bit
    return -1


def _mask_indices(buf, start, top):
    return [i for i in range(top + 1) if buf[start + i // 8] >> (i % 8) & 1]


def _to_mask(indices):
    mask = bytearray(indices[-1] // 8 + 1)
    for i in indices:
        mask[i // 8] |= 1 << (i % 8)
    return mask


def result_size(batch, n_features, bits):
    """Payload bytes of a RESULT of ``batch`` samples."""
    return 9 + (batch * n_features * bits + 7) // 8


class _Refusal(Exception):
    """A request answered with ERROR ``code``."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code
        self.text = text


# --- the device ------------------------------------------------------------------

class Core:
    """The protocol state machine of one device: parked after reset until CONFIGURE.

    ``scale`` is the feature value of ADC full scale (``adc_full`` counts), sent in
    every RESULT: a finite float32 > 0 (§3.4). ``max_result`` caps a RESULT payload
    below 65535 bytes where RAM is short: a CONFIGURE whose RESULT at ``max_batch``
    would exceed it is BAD_CONFIG. ``max_batch`` must let a FORWARD of that many
    samples fit its payload (§3.1). Raises ValueError for sizes or a scale outside these.
    """

    def __init__(self, hw, n_inputs, n_nodes, max_batch, firmware_id,
                 scale=3.3, adc_full=4095, dac_bits=12, max_result=MAX_PAYLOAD):
        if not (1 <= n_inputs <= 0xFFFF and 1 <= n_nodes <= 0xFFFF):
            raise ValueError("n_inputs and n_nodes must be in 1..65535")
        limit = (MAX_PAYLOAD - 4) // (2 * n_inputs)
        if not 1 <= max_batch <= limit:   # HELLO never announces a batch a FORWARD cannot carry
            raise ValueError("max_batch %d with %d inputs: a FORWARD carries 1 to %d samples"
                             % (max_batch, n_inputs, limit))
        self.hw = hw
        self.n_inputs, self.n_nodes, self.max_batch = n_inputs, n_nodes, max_batch
        self.firmware_id = firmware_id.encode()
        if len(self.firmware_id) > FIRMWARE_ID_MAX:
            raise ValueError("firmware_id longer than 64 bytes of UTF-8")
        try:
            sent = struct.unpack("<f", struct.pack("<f", scale))[0]   # as the RESULT carries it
        except OverflowError:
            sent = float("inf")
        if not 0 < sent < float("inf"):
            raise ValueError("scale must be a finite float32 > 0")
        self.scale, self.adc_full, self.dac_bits = scale, adc_full, dac_bits
        self.max_result = min(max_result, MAX_PAYLOAD)
        self.zero = dac_code(0, dac_bits)
        cause = hw.reset_cause()
        self.reset_cause = cause if cause in (0, 1, 2, 3, 4) else 0
        # Default configuration: every node of the last step at 12 bits, no settling.
        self.steps, self.nodes, self.bits, self.settle = [n_inputs - 1], list(range(n_nodes)), 12, 0
        if result_size(max_batch, n_nodes, 12) > self.max_result:
            self.nodes = [0]
        self.parked = True
        hw.park()
        self._cache_key = None      # (seq, type, trial_id, crc) of the last request answered
        self._cache_reply = None    # and the frame sent for it
        # The largest valid request is a FORWARD of max_batch samples (or a CONFIGURE
        # with shortest masks); anything longer without a 0x00 is dropped.
        raw = MIN_FRAME + max(4 + 2 * max_batch * n_inputs, 7 + (n_inputs + 7) // 8 + (n_nodes + 7) // 8)
        self.rx_max = min(raw + raw // 254 + 1, MAX_ENCODED_FRAME)
        self._rx = bytearray()
        self._overflow = False

    # -- the byte stream ---------------------------------------------------------

    def feed(self, data):
        """Reply frames (each ending in 0x00) for every request completed by ``data``."""
        replies = []
        data = bytes(data)
        start = 0
        while True:
            end = data.find(b"\x00", start)
            chunk = data[start:] if end < 0 else data[start:end]
            if not self._overflow:
                if len(self._rx) + len(chunk) > self.rx_max:
                    self._overflow = True      # drop bytes up to the next 0x00
                    self._rx = bytearray()
                else:
                    self._rx.extend(chunk)
            if end < 0:
                return replies
            if self._rx and not self._overflow:
                reply = self.handle(self._rx)
                if reply is not None:
                    replies.append(reply)
            self._rx = bytearray()
            self._overflow = False
            start = end + 1

    def handle(self, encoded):
        """The reply frame for one COBS-encoded frame (no delimiter), or None to drop it."""
        if len(encoded) > MAX_ENCODED_FRAME:
            return None
        try:
            raw = cobs_decode(encoded)
        except ValueError:
            return None
        if len(raw) < MIN_FRAME:
            return None
        crc = raw[-2] | raw[-1] << 8
        if crc16(memoryview(raw)[:-2]) != crc:
            return None
        msg_type, seq = raw[1], _u16(raw, 2)
        trial_id = _u16(raw, 4) | _u16(raw, 6) << 16
        key = (seq, msg_type, trial_id, crc)
        if key == self._cache_key:
            return self._cache_reply             # a retry: replay, never drive twice
        self._cache_key = self._cache_reply = None   # free the old reply's RAM first
        try:
            reply_type, payload = self._answer(raw, msg_type)
        except _Refusal as refusal:
            text = refusal.text
            while len(text.encode()) > ERROR_TEXT_MAX:   # cut whole characters, not UTF-8 bytes
                text = text[:-1]
            reply_type, payload = ERROR, bytes([refusal.code]) + text.encode()
        reply = encode_frame(reply_type, seq, trial_id, payload)
        self._cache_key, self._cache_reply = key, reply
        return reply

    def idle_park(self):
        """Park the ring after a long silence on the link (§5 allows 10 s)."""
        if not self.parked:
            self._park()

    # -- requests ----------------------------------------------------------------

    def _answer(self, raw, msg_type):
        if raw[0] != PROTOCOL_VERSION:
            raise _Refusal(BAD_VERSION, "version %d, this firmware speaks %d" % (raw[0], PROTOCOL_VERSION))
        payload = memoryview(raw)[HEADER_SIZE:-2]
        if _u16(raw, 8) != len(payload):
            raise _Refusal(BAD_PAYLOAD, "length field says %d, frame carries %d" % (_u16(raw, 8), len(payload)))
        if msg_type == HELLO:
            self._expect_len(payload, 0)
            return HELLO | REPLY, self._hello()
        if msg_type == CONFIGURE:
            return CONFIGURE | REPLY, self._configure(payload)
        if msg_type == FORWARD:
            return FORWARD | REPLY, self._forward(payload)
        if msg_type == PING:
            self._expect_len(payload, 4)
            return PING | REPLY, bytes(payload)
        if msg_type == SAFE:
            self._expect_len(payload, 0)
            self._park()
            return SAFE | REPLY, b""
        raise _Refusal(UNKNOWN_TYPE, "unknown request type 0x%02x" % msg_type)

    @staticmethod
    def _expect_len(payload, n):
        if len(payload) != n:
            raise _Refusal(BAD_PAYLOAD, "expected %d payload bytes, got %d" % (n, len(payload)))

    def _park(self):
        self.parked = True
        self.hw.park()

    def _hello(self):
        head = struct.pack("<BBHHHH", PROTOCOL_VERSION, self.reset_cause, self.n_inputs,
                           self.n_nodes, len(self.steps) * len(self.nodes), self.max_batch)
        return head + self.firmware_id

    def _sampling(self):
        steps, nodes = _to_mask(self.steps), _to_mask(self.nodes)
        return struct.pack("<BHHH", self.bits, self.settle, len(steps), len(nodes)) + steps + nodes

    def _configure(self, p):
        if len(p) < 7:
            self._expect_len(p, 7)
        bits, settle, n_steps, n_nodes = p[0], _u16(p, 1), _u16(p, 3), _u16(p, 5)
        self._expect_len(p, 7 + n_steps + n_nodes)
        step_top = _mask_top(p, 7, 7 + n_steps)
        node_top = _mask_top(p, 7 + n_steps, len(p))
        if step_top < 0 or node_top < 0:
            raise _Refusal(BAD_PAYLOAD, "step_mask and node_mask need a bit set each")
        if max(step_top, node_top) > INDEX_MAX:
            raise _Refusal(BAD_PAYLOAD, "mask index above %d" % INDEX_MAX)
        if bits not in FEATURE_BITS:
            raise _Refusal(BAD_CONFIG, "bits %d not one of 8, 12, 16" % bits)
        if step_top >= self.n_inputs or node_top >= self.n_nodes:
            raise _Refusal(BAD_CONFIG, "step %d or node %d beyond %d inputs, %d nodes"
                           % (step_top, node_top, self.n_inputs, self.n_nodes))
        steps, nodes = _mask_indices(p, 7, step_top), _mask_indices(p, 7 + n_steps, node_top)
        size = result_size(self.max_batch, len(steps) * len(nodes), bits)
        if size > self.max_result:
            raise _Refusal(BAD_CONFIG, "RESULT of %d bytes at max_batch %d exceeds %d"
                           % (size, self.max_batch, self.max_result))
        self.steps, self.nodes, self.bits, self.settle = steps, nodes, bits, settle
        self.parked = False
        return self._sampling()

    def _forward(self, p):
        if len(p) < 4:
            self._expect_len(p, 4)
        batch, n = _u16(p, 0), _u16(p, 2)
        self._expect_len(p, 4 + 2 * batch * n)
        if batch < 1 or n < 1:
            raise _Refusal(BAD_PAYLOAD, "batch %d and width %d must be >= 1" % (batch, n))
        for k in range(4, len(p), 2):
            if p[k] == 0 and p[k + 1] == 0x80:
                raise _Refusal(BAD_PAYLOAD, "input code -32768 outside [-32767, 32767]")
        if batch > self.max_batch:
            raise _Refusal(BATCH_TOO_LARGE, "batch %d above max_batch %d" % (batch, self.max_batch))
        if n != self.n_inputs:
            raise _Refusal(SHAPE_MISMATCH, "%d inputs per sample, ring takes %d" % (n, self.n_inputs))
        if self.parked:
            raise _Refusal(PARKED, "parked")
        try:
            return self._drive_ring(p, batch)
        except Exception as exc:   # the DAC, the ADC or the ring failed: park, report
            try:
                self._park()
            except Exception:
                self.parked = True
            raise _Refusal(HARDWARE_FAULT, "%s: %s" % (type(exc).__name__, exc))

    def _drive_ring(self, p, batch):
        """Run the batch through the ring; the RESULT payload, packed as it is sampled."""
        hw, n, nodes, bits = self.hw, self.n_inputs, self.nodes, self.bits
        full, adc_full = (1 << bits) - 1, self.adc_full
        sampled = bytearray(n)
        for i in self.steps:
            sampled[i] = 1
        n_features = len(self.steps) * len(nodes)
        out = bytearray(result_size(batch, n_features, bits))
        struct.pack_into("<HHfB", out, 0, batch, n_features, self.scale, bits)
        at, acc, acc_bits = 9, 0, 0    # the little-endian bit stream of codes
        for b in range(batch):
            if self.settle:
                hw.drive(self.zero)    # settle: the ring forgets the previous sample
                hw.wait(self.settle)
            for i in range(n):
                k = 4 + 2 * (b * n + i)
                code = p[k] | p[k + 1] << 8
                hw.drive(dac_code(code - 0x10000 if code & 0x8000 else code, self.dac_bits))
                if not sampled[i]:
                    continue
                counts = hw.sample(nodes)
                if len(counts) != len(nodes):
                    raise ValueError("ADC gave %d readings for %d slots" % (len(counts), len(nodes)))
                for count in counts:
                    acc |= rescale(int(count), adc_full, full) << acc_bits
                    acc_bits += bits
                    while acc_bits >= 8:
                        out[at] = acc & 0xFF
                        acc >>= 8
                        acc_bits -= 8
                        at += 1
        if acc_bits:
            out[at] = acc
        hw.drive(self.zero)            # no input reaches the ring between requests
        return out
