"""Memory capacity: a memoryless ring remembers nothing; the measure is bounded."""

from pgt.kernels import RingParams
from pgt.kernels._memory import memory_capacity, memory_curve


def test_a_ring_without_feedback_has_no_memory_of_past_inputs():
    assert memory_capacity(RingParams(gain=0.0, bias=0.2), length=2000) < 0.1


def test_feedback_gives_memory_that_fades_with_delay():
    curve = memory_curve(RingParams(bias=0.2), length=3000)
    assert curve.sum() > 1.0
    assert curve[0] > curve[4] > curve[-1]
    assert curve.sum() <= RingParams().nodes
