"""The identity reservoir: features are the inputs; its URL is checked like the ring's."""

import numpy as np
import pytest

from pgt.backends import ReservoirURLError, open_reservoir


async def test_features_are_the_inputs_and_the_vjp_is_the_identity():
    async with open_reservoir("sim://identity?inputs=4") as device:
        assert (device.info.n_inputs, device.info.n_features) == (4, 4)
        u = np.random.default_rng(0).uniform(-1, 1, (3, 4))
        np.testing.assert_array_equal(await device.forward(u), u)
        np.testing.assert_array_equal(device.vjp(u, u * 2), u * 2)


@pytest.mark.parametrize(("url", "named"), [("sim://identity?nodes=3", "nodes"),
                                            ("sim://identity?inputs=x", "inputs"),
                                            ("sim://identity?inputs=0", "inputs")])
async def test_bad_identity_urls_are_one_line_errors(url, named):
    with pytest.raises(ReservoirURLError, match=named):
        async with open_reservoir(url):
            pass
