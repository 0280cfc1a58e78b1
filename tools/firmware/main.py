"""pgt reference firmware for the pyboard (MicroPython on STM32F405): the glue.

Reads bytes from the link (USB_VCP by default, or a UART), hands them to
pgt_core.Core and writes its replies back; drives the ring through DAC 1 (X5),
reads the detector through the ADC on X19, and runs a watchdog. Everything the
protocol says lives in pgt_core.py; see README.md beside this file for wiring,
flashing and the limits of a pyboard as a ring driver.

Hold the USR switch while the board boots to skip the firmware and get the REPL.
"""

import machine
import pyb
import time

import pgt_core

FIRMWARE_ID = "pgt-pyboard 1.0"
N_INPUTS = 16            # input steps per sample
N_NODES = 24             # virtual nodes per round trip of the ring
MAX_BATCH = 16           # a 16-bit RESULT of every step and node stays under MAX_RESULT
MAX_RESULT = 16384       # RESULT payload cap in bytes: the board has ~100 KB of heap
DETECTOR_FULL_SCALE = 3.3    # feature value of ADC full scale (volts at X19)
ROUND_TRIP_NS = 100      # the ring's round trip
DAC_SETTLE_US = 3        # DAC output settling after each write
STROBE = False           # True: an external fast sampler holds one slot per trigger
HOLD_US = 2              # sample-and-hold settling after a trigger
LINK = "vcp"             # "vcp" (USB) or "uart"
UART_ID, UART_BAUD = 4, 115200   # UART(4): TX on X1, RX on X2
WATCHDOG_MS = 2000
IDLE_PARK_MS = 10000     # park after this long without a request (protocol §5)

_RESET_CAUSES = (("PWRON_RESET", 1), ("WDT_RESET", 2), ("SOFT_RESET", 4))


class PyboardRing:
    """The hw object of pgt_core: DAC 1 on X5 drives, the ADC on X19 detects.

    Y3 enables the ring's drive amplifier (pull it down on the driver side, so a
    reset or a dead board leaves the ring undriven); Y4 triggers the external
    sampler and SPI(2) (Y6 SCK, Y8 MOSI) tells it which slot to hold.
    """

    def __init__(self, wdt):
        self.wdt = wdt
        self.dac = pyb.DAC(1, bits=12)
        self.adc = pyb.ADC(pyb.Pin("X19"))
        self.enable = pyb.Pin("Y3", pyb.Pin.OUT_PP)
        self.trigger = pyb.Pin("Y4", pyb.Pin.OUT_PP)
        self.trigger.low()
        self.spi = pyb.SPI(2, pyb.SPI.MASTER, baudrate=10000000) if STROBE else None
        self.zero = pgt_core.dac_code(0, 12)
        self.park()

    def drive(self, code):
        self.dac.write(code)
        self.enable.high()
        pyb.udelay(DAC_SETTLE_US)
        self.wdt.feed()

    def wait(self, round_trips):
        us = (round_trips * ROUND_TRIP_NS + 999) // 1000
        while us > 0:   # in slices, so a long settle never starves the watchdog
            pyb.udelay(min(us, 1000))
            us -= 1000
            self.wdt.feed()

    def sample(self, slots):
        counts = []
        for slot in slots:
            if self.spi is not None:
                self.spi.write(bytes((slot & 0xFF, slot >> 8)))
                self.trigger.high()
                self.trigger.low()
                pyb.udelay(HOLD_US)
            counts.append(self.adc.read())
        return counts

    def park(self):
        self.dac.write(self.zero)
        self.enable.low()

    def reset_cause(self):
        cause = machine.reset_cause()
        for name, code in _RESET_CAUSES:
            if cause == getattr(machine, name, None):
                return code
        return 0


def open_link():
    if LINK == "uart":
        return pyb.UART(UART_ID, UART_BAUD, timeout=0, rxbuf=4096)
    vcp = pyb.USB_VCP()
    vcp.setinterrupt(-1)    # 0x03 is data here, not Ctrl-C
    return vcp


def write_all(link, frame):
    view = memoryview(frame)
    while len(view):
        n = link.write(view)
        if n:
            view = view[n:]


def serve(core, link, wdt):
    last_request = time.ticks_ms()
    while True:
        wdt.feed()
        if link.any():    # USB_VCP.any() is a bool, UART.any() a count
            data = link.read()
            if data:
                for reply in core.feed(data):
                    write_all(link, reply)
                    last_request = time.ticks_ms()
        elif time.ticks_diff(time.ticks_ms(), last_request) > IDLE_PARK_MS:
            core.idle_park()
            last_request = time.ticks_ms()
        else:
            pyb.wfi()    # sleep until the next interrupt (USB, UART or the 1 ms tick)


def main():
    if pyb.Switch()():
        return          # USR held at boot: stay in the REPL, e.g. to reflash
    wdt = machine.WDT(timeout=WATCHDOG_MS)
    ring = PyboardRing(wdt)
    core = pgt_core.Core(ring, N_INPUTS, N_NODES, MAX_BATCH, FIRMWARE_ID,
                         scale=DETECTOR_FULL_SCALE, adc_full=4095, dac_bits=12,
                         max_result=MAX_RESULT)
    try:
        serve(core, open_link(), wdt)
    finally:
        ring.park()     # on any crash; the watchdog then resets the board


main()
