"""The simulated magnonic auto-oscillation ring: a round-trip amplitude map.

A spin-wave delay line closed through an amplifier, run just below its
auto-oscillation threshold, time-multiplexed into N virtual nodes (slots) per round
trip. Each input step u_n drives every slot j through a fixed random mask m_j:

    drive  = g0 * (1 + kappa * m_j * u_n)                 input modulates the loop gain
    c      = (h * a_{n-1})[j]                             FIR over neighbouring slots
    a_n[j] = drive * S(|c|^2) * c * exp(i nu |c|^2) + b * m_j * u_n + bias
    S(P)   = 1 / (1 + P / p_sat)                          saturation
    f_n[j] = |a_n[j]|^2                                   square-law detector

The complex amplitude is carried as two real arrays (x, y), so the same code runs
on NumPy and CuPy and its backward is plain real calculus. Detector noise is
multiplicative (``noise`` = relative standard deviation) and counter-based: element i
of the features called at clock ``tick`` with ``seed`` reads Gaussian i of the Philox
direction (seed, NOISE_STREAM, step=tick, k=0), so the CPU and the GPU draw the
same noise. Slow gain drift is a sinusoid of the ring's own clock (one tick per
forward call). kernels/_fused.py holds the same map as one CuPy kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from pgt.kernels._philox import directions
from pgt.kernels._xp import array_module

NOISE_STREAM = 0x5EED  # Philox stream of the detector noise (estimators use 0 and 1)


@dataclass(frozen=True)
class RingParams:
    """Physical parameters of the simulated ring (defaults: README, "The ring")."""

    nodes: int = 24          # virtual nodes (slots) per round trip
    gain: float = 0.85       # loop gain g0 < 1: memory of about 1/(1-g0) round trips
    kappa: float = 0.6       # input modulation depth of the loop gain
    inject: float = 0.5      # direct input injection b
    bias: float = 0.0        # constant carrier injection: the ring's operating point
    p_sat: float = 1.0       # saturation power
    nu: float = 1.0          # nonlinear phase shift per unit power
    tap: float = 0.2         # neighbour coupling: FIR taps (tap, 1 - 2 tap, tap)
    noise: float = 0.0       # detector noise, relative standard deviation
    drift: float = 0.0       # relative amplitude of the slow gain drift
    drift_period: float = 2000.0  # drift period in forward calls
    mask_seed: int = 1234    # the ring's fixed input mask (a property of the device)
    ref: float = 0.0         # reference line: amplitude mixed onto the output before the
                             # diode, which then reads |a + ref e^{i ref_phase}|² (0: none)
    ref_phase: float = 0.0   # its phase (radians)
    detune: float = 0.0      # linear phase per round trip (radians): the loop's detuning
                             # from its resonance; rotates the amplitude each round trip
    floor: float = 0.0       # additive detector noise, standard deviation in feature units
                             # (the diode and amplifier's noise floor)
    walk: float = 0.0        # slow gain fluctuation, relative standard deviation: a sum of
                             # random walks (Ornstein-Uhlenbeck) with correlation times of
                             # 100, 1,000 and 10,000 ticks, a 1/f-like drift
    bits: int = 0            # ADC resolution of the detector reading (0: not quantised)
    adc_max: float = 4.0     # the ADC's full scale, in feature units (readings clip there)
    clock: str = "call"      # "call": one tick per forward call; "sample": one per sample,
                             # so samples (and probes) run one after another see the drift move

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"ring: nodes must be >= 1, got {self.nodes}")
        if not 0.0 <= self.gain < 1.5:
            raise ValueError(f"ring: gain must be in [0, 1.5), got {self.gain}")
        if self.p_sat <= 0:
            raise ValueError(f"ring: p_sat must be > 0, got {self.p_sat}")
        if not 0.0 <= self.tap <= 0.5:
            raise ValueError(f"ring: tap must be in [0, 0.5], got {self.tap}")
        if self.noise < 0 or self.drift < 0 or self.floor < 0 or self.walk < 0:
            raise ValueError("ring: noise, drift, floor and walk must be >= 0")
        if not 0 <= self.bits <= 24:
            raise ValueError(f"ring: bits must be 0 (no ADC) to 24, got {self.bits}")
        if not self.adc_max > 0:
            raise ValueError(f"ring: adc_max must be > 0, got {self.adc_max}")
        if self.clock not in ("call", "sample"):
            raise ValueError(f"ring: clock must be 'call' or 'sample', got {self.clock!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> RingParams:
        """A named operating point (``PRESETS``) with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"ring: unknown preset {name!r} (known: {', '.join(PRESETS)})")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def field_types(cls) -> dict[str, type]:
        return {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}

    def mask(self, xp=np, dtype=np.float64):
        """The fixed input mask m_j, uniform in [-1, 1], from ``mask_seed``.

        Drawn on the host (NumPy) and copied to ``xp``, so every device sees the
        same mask.
        """
        rng = np.random.default_rng(self.mask_seed)
        return xp.asarray(rng.uniform(-1.0, 1.0, self.nodes).astype(dtype))

    def gain_at(self, tick: int) -> float:
        """Loop gain at the ring's clock ``tick``, with the slow drift applied."""
        if self.drift == 0.0:
            return self.gain
        # A Python float: a NumPy float64 scalar would promote float32 arrays.
        return float(self.gain * (1.0 + self.drift * np.sin(2.0 * np.pi * tick / self.drift_period)))


# Named operating points. "memory": a ring read through a reference line (the diode
# sees the ring's output mixed with a carrier: phase-sensitive, linear in the
# amplitude), with the pulse broadened over neighbouring slots (tap 0.3), a weak
# nonlinear phase (0.05), saturation (power 1.5) and weak input modulation of the
# gain: its short-term memory and parity-check capacities lie in the ranges measured
# on real active rings (README, "The simulated ring").
PRESETS = {
    "default": {},
    "memory": {"ref": 1.0, "gain": 0.85, "tap": 0.3, "nu": 0.05, "p_sat": 1.5, "kappa": 0.2,
               "inject": 0.3},
}


def _fir(tap: float, a):
    xp = array_module(a)
    return tap * xp.roll(a, 1, axis=-1) + (1.0 - 2.0 * tap) * a + tap * xp.roll(a, -1, axis=-1)


def _fir_transpose(tap: float, g):
    xp = array_module(g)
    return tap * xp.roll(g, -1, axis=-1) + (1.0 - 2.0 * tap) * g + tap * xp.roll(g, 1, axis=-1)


# The scalars of the round-trip map, in the order ``ring_map`` and its backward use.
MAP_SCALARS = ("gain", "kappa", "inject", "bias", "p_sat", "nu", "tap")


def detector_noise(seed: int, tick: int, shape, *, xp=np, dtype=np.float64, k: int = 0):
    """Standard normal detector noise of one forward call: Philox (seed, tick, k); k 0
    is the multiplicative noise, k 1 the additive floor."""
    size = int(np.prod(shape))
    z = directions(seed, tick, [k], size, "gaussian", stream=NOISE_STREAM, xp=xp, dtype=dtype)
    return z.reshape(shape)


WALK_TAUS = (100.0, 1000.0, 10000.0)   # correlation times of the gain walk, in ticks
WALK_STREAM = 0x3A1C                   # its Philox stream


def needs_gain_path(params: RingParams) -> bool:
    """Whether the gain moves within a call or by a walk (``gain_path``)."""
    return params.walk > 0 or params.clock == "sample"


def gain_path(params: RingParams, tick: int, count: int, seed: int, walk):
    """The loop gain at ticks tick .. tick+count-1 and the walk's state after them.

    gain = g0 (1 + drift sin(2π t / period) + w_t), w the sum of three AR(1) walks
    (``WALK_TAUS``) each of stationary variance walk²/3, advanced from ``walk`` (3,)
    with Philox innovations (seed, WALK_STREAM, step=tick): a pure function, so a
    resumed ring continues the same path.
    """
    from scipy.signal import lfilter

    ticks = tick + np.arange(count)
    offset = np.zeros(count)
    state = np.zeros(len(WALK_TAUS)) if walk is None else np.asarray(walk, dtype=np.float64)
    new = state.copy()
    if params.walk > 0:
        xi = directions(seed, tick, list(range(len(WALK_TAUS))), count, "gaussian",
                        stream=WALK_STREAM)   # (3, count): a prefix whatever the count
        for i, tau in enumerate(WALK_TAUS):
            rho = float(np.exp(-1.0 / tau))
            sigma = params.walk * np.sqrt((1.0 - rho * rho) / len(WALK_TAUS))
            path, _ = lfilter([sigma], [1.0, -rho], xi[i], zi=[rho * state[i]])
            offset += path
            new[i] = path[-1]
    sine = params.drift * np.sin(2.0 * np.pi * ticks / params.drift_period) if params.drift else 0.0
    return params.gain * (1.0 + sine + offset), new


def ring_forward(params: RingParams, u, *, tick: int = 0, seed: int | None = None,
                 keep_cache=False, gains=None):
    """Run the ring over input sequences ``u`` (B, T) in [-1, 1].

    Returns features (B, T, N) (detector power of every slot on every round trip)
    and, with ``keep_cache``, what ``ring_backward`` needs. ``tick`` is the ring's
    clock: it sets the gain drift and, with ``seed``, the detector noise (required
    when ``params.noise`` or ``params.floor`` > 0; see ``detector_noise``). ``gains``:
    the loop gain of each sample (``gain_path``) instead of ``gain_at(tick)``. The
    reading is then quantised by the ADC when ``params.bits`` is set. Computes in
    ``u.dtype``.
    """
    xp = array_module(u)
    scalars = {name: getattr(params, name) for name in MAP_SCALARS}
    scalars["gain"] = params.gain_at(tick)
    if gains is not None:   # per sample: (B, 1), broadcast over the nodes
        scalars["gain"] = xp.asarray(gains, dtype=u.dtype).reshape(-1, 1)
    scalars["ref"], scalars["ref_phase"] = params.ref, params.ref_phase
    scalars["detune"] = params.detune
    out = ring_map(u, params.mask(xp, u.dtype), keep_cache=keep_cache, **scalars)
    feats = out[0] if keep_cache else out
    if params.noise > 0.0:
        if seed is None:
            raise ValueError("ring: noise > 0 needs a seed")
        feats *= 1.0 + params.noise * detector_noise(seed, tick, feats.shape, xp=xp, dtype=feats.dtype)
    if params.floor > 0.0:
        if seed is None:
            raise ValueError("ring: a noise floor needs a seed")
        feats += params.floor * detector_noise(seed, tick, feats.shape, xp=xp, dtype=feats.dtype, k=1)
    if params.bits:
        step = params.adc_max / (2**params.bits - 1)
        feats[...] = xp.round(xp.clip(feats, 0.0, params.adc_max) / step) * step
    return out


def ring_map(u, mask, *, gain, kappa, inject, bias, p_sat, nu, tap, ref=0.0, ref_phase=0.0,
             detune=0.0, keep_cache=False):
    """The noise-free round-trip map with every physical quantity explicit: the mask
    (N,) and the scalars of ``MAP_SCALARS``. ``ref``: the amplitude of the reference
    line added to the ring's output before the diode (phase ``ref_phase``), which makes
    the reading phase-sensitive: |a + ref e^{iφ}|². Returns features (B, T, N) and, with
    ``keep_cache``, what ``ring_map_backward`` and ``ring_backward`` need."""
    xp = array_module(u)
    batch, steps = u.shape
    nodes = mask.shape[0]
    g0 = gain
    ax = xp.zeros((batch, nodes), dtype=u.dtype)
    ay = xp.zeros_like(ax)
    feats = xp.empty((batch, steps, nodes), dtype=u.dtype)
    cache = []
    for n in range(steps):
        mu = u[:, n : n + 1] * mask
        cx, cy = _fir(tap, ax), _fir(tap, ay)
        power = cx * cx + cy * cy
        sat = 1.0 / (1.0 + power / p_sat)
        phase = nu * power + detune if detune else nu * power
        co, si = xp.cos(phase), xp.sin(phase)
        drive = g0 * (1.0 + kappa * mu)
        rx, ry = cx * co - cy * si, cx * si + cy * co
        ax = drive * sat * rx + inject * mu + bias
        ay = drive * sat * ry
        if ref:
            ox, oy = ax + ref * np.cos(ref_phase), ay + ref * np.sin(ref_phase)
            feats[:, n, :] = ox * ox + oy * oy
        else:
            feats[:, n, :] = ax * ax + ay * ay
        if keep_cache:
            cache.append((cx, cy, sat, co, si, drive, rx, ry, ax, ay))
    scalars = {"gain": gain, "kappa": kappa, "inject": inject, "bias": bias, "p_sat": p_sat,
               "nu": nu, "tap": tap, "ref": ref, "ref_phase": ref_phase, "detune": detune}
    return (feats, (g0, mask, cache, u, scalars)) if keep_cache else feats


def ring_backward(params: RingParams, cache, grad_feats):
    """Gradient of an objective w.r.t. the inputs u, given d(objective)/d(features).

    ``cache`` comes from ``ring_forward(..., keep_cache=True)`` run without noise
    (the backward of the noise-free map; used by the ``backprop`` reference).
    """
    return ring_map_backward(cache, grad_feats)[0]


def ring_map_backward(cache, grad_feats, *, wrt_params: bool = False):
    """Gradients of an objective, given d(objective)/d(features) (B, T, N), w.r.t. the
    inputs u (B, T) and, with ``wrt_params``, the physical quantities: a dict of the
    ``MAP_SCALARS`` and ``mask`` (N,). ``cache`` is ``ring_map``'s. Returns
    (grad_u, grads or None); grad_u has the same bits either way."""
    xp = array_module(grad_feats)
    g0, mask, steps, u, s = cache
    kappa, inject, p_sat, nu, tap = s["kappa"], s["inject"], s["p_sat"], s["nu"], s["tap"]
    batch, n_steps, _ = grad_feats.shape
    grad_u = xp.empty((batch, n_steps), dtype=grad_feats.dtype)
    gax = xp.zeros((batch, mask.shape[0]), dtype=grad_feats.dtype)
    gay = xp.zeros_like(gax)
    grads = {name: 0.0 for name in MAP_SCALARS} if wrt_params else None
    if wrt_params:
        grads["mask"] = xp.zeros_like(mask)
    ref, phase = s.get("ref", 0.0), s.get("ref_phase", 0.0)
    for n in range(n_steps - 1, -1, -1):
        cx, cy, sat, co, si, drive, rx, ry, ax, ay = steps[n]
        if ref:   # the diode reads |a + ref e^{iφ}|²
            gax = gax + 2.0 * (ax + ref * np.cos(phase)) * grad_feats[:, n, :]
            gay = gay + 2.0 * (ay + ref * np.sin(phase)) * grad_feats[:, n, :]
        else:
            gax = gax + 2.0 * ax * grad_feats[:, n, :]
            gay = gay + 2.0 * ay * grad_feats[:, n, :]
        g_drive = sat * (gax * rx + gay * ry)
        g_sat = drive * (gax * rx + gay * ry)
        g_rx, g_ry = gax * drive * sat, gay * drive * sat
        g_mu = g_drive * g0 * kappa + gax * inject
        grad_u[:, n] = (g_mu * mask).sum(axis=1)
        g_cx = g_rx * co + g_ry * si
        g_cy = -g_rx * si + g_ry * co
        g_phase = g_ry * rx - g_rx * ry
        g_power = g_phase * nu - g_sat * sat * sat / p_sat
        g_cx = g_cx + 2.0 * cx * g_power
        g_cy = g_cy + 2.0 * cy * g_power
        if wrt_params:
            _param_grads(grads, n, steps, u, mask, g0, kappa, gax, g_drive, g_sat, g_mu,
                         g_phase, g_cx, g_cy, cx, cy, sat, p_sat)
        gax, gay = _fir_transpose(tap, g_cx), _fir_transpose(tap, g_cy)
    return grad_u, grads


def _param_grads(grads, n, steps, u, mask, g0, kappa, gax, g_drive, g_sat, g_mu,
                 g_phase, g_cx, g_cy, cx, cy, sat, p_sat) -> None:
    """Add step n's share of the physical quantities' gradients (``ring_map_backward``)."""
    xp = array_module(gax)
    un = u[:, n : n + 1]
    mu = un * mask
    power = cx * cx + cy * cy
    grads["bias"] += float(gax.sum())
    grads["inject"] += float((gax * mu).sum())
    grads["gain"] += float((g_drive * (1.0 + kappa * mu)).sum())
    grads["kappa"] += float((g_drive * g0 * mu).sum())
    grads["p_sat"] += float((g_sat * sat * sat * power / (p_sat * p_sat)).sum())
    grads["nu"] += float((g_phase * power).sum())
    grads["mask"] += (g_mu * un).sum(axis=0)
    if n > 0:   # c = fir(a_{n-1}); dc/dtap = roll(a,1) - 2a + roll(a,-1)
        ax, ay = steps[n - 1][8], steps[n - 1][9]
        dx = xp.roll(ax, 1, axis=-1) - 2.0 * ax + xp.roll(ax, -1, axis=-1)
        dy = xp.roll(ay, 1, axis=-1) - 2.0 * ay + xp.roll(ay, -1, axis=-1)
        grads["tap"] += float((g_cx * dx + g_cy * dy).sum())
