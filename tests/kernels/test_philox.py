"""Counter-based directions: known-answer vectors, statistics, regeneration."""

import numpy as np
import pytest

from pgt.kernels import accumulate, directions, philox4x32


@pytest.mark.parametrize(
    ("counter", "key", "expected"),
    [  # Random123's published known-answer vectors for Philox4x32-10
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ],
)
def test_philox_known_answers(counter, key, expected):
    words = philox4x32(np, *[np.array([c], dtype=np.uint64) for c in counter], *key)
    assert [int(w[0]) for w in words] == expected


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_directions_are_regenerated_exactly(dist):
    a = directions(5, 17, [0, 1, 2], 1001, dist)
    b = directions(5, 17, [2], 1001, dist)
    np.testing.assert_array_equal(a[2], b[0])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a, directions(5, 18, [0, 1, 2], 1001, dist))
    assert not np.array_equal(a, directions(6, 17, [0, 1, 2], 1001, dist))
    assert not np.array_equal(a, directions(5, 17, [0, 1, 2], 1001, dist, stream=1))


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
@pytest.mark.parametrize(("short", "long"), [(10, 13), (13, 14), (1, 2), (7, 4096)])
def test_a_direction_prefix_does_not_depend_on_its_length(dist, short, long):
    """Element i is the same in every length, the last one of an odd length too."""
    np.testing.assert_array_equal(directions(1, 2, [3], short, dist)[0], directions(1, 2, [3], long, dist)[0, :short])


def test_direction_statistics():
    g = directions(0, 0, range(8), 20000, "gaussian")
    assert abs(g.mean()) < 0.01 and abs(g.std() - 1) < 0.01
    assert abs(np.mean(g**4) - 3) < 0.1  # normal kurtosis
    r = directions(0, 0, range(8), 20000, "rademacher")
    assert set(np.unique(r)) == {-1.0, 1.0} and abs(r.mean()) < 0.01


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_accumulate_equals_explicit_sum(dist):
    coeffs = np.random.default_rng(0).normal(size=11)
    explicit = coeffs @ directions(3, 4, range(11), 333, dist)
    for chunk in (1, 4, 11):
        np.testing.assert_allclose(accumulate(3, 4, coeffs, 333, dist, chunk=chunk), explicit, rtol=1e-12)
    per_element = np.random.default_rng(1).normal(size=(11, 333))
    expected = (per_element * directions(3, 4, range(11), 333, dist)).sum(axis=0)
    np.testing.assert_allclose(accumulate(3, 4, per_element, 333, dist, chunk=3), expected, rtol=1e-12)


def test_unknown_distribution_is_named():
    with pytest.raises(ValueError, match="uniform"):
        directions(0, 0, [0], 4, "uniform")


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_a_sum_built_in_parts_is_the_sum_in_one_call(dist):
    """Parts that start at multiples of the chunk add the same chunks in the same order."""
    rng = np.random.default_rng(2)
    for coeffs in (rng.normal(size=13), rng.normal(size=(13, 101))):
        whole = accumulate(5, 6, coeffs, 101, dist, chunk=4)
        total = accumulate(5, 6, coeffs[:4], 101, dist, chunk=4)
        total = accumulate(5, 6, coeffs[4:12], 101, dist, chunk=4, first=4, total=total)
        parts = accumulate(5, 6, coeffs[12:], 101, dist, chunk=4, first=12, total=total)
        assert parts is total and parts.tobytes() == whole.tobytes()
