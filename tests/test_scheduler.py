import pytest
import torch

from vidcascade.config import SamplingConfig
from vidcascade.scheduling.timesteps import (
    euler_step,
    make_schedule,
    renoise,
    sigma_for_timestep,
    sigma_table,
    warp_timesteps,
    x0_from_velocity,
)


def test_self_forcing_warped_list():
    # reference/block_causal_models.md §3: shift 5 warps 1000,750,500,250 to these values.
    got = warp_timesteps((1000, 750, 500, 250), 5.0)
    assert got == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)


def test_causvid_shift8_warp():
    got = warp_timesteps((1000, 750, 500, 250), 8.0)
    assert got == pytest.approx([1000.0, 960.0, 888.8889, 727.2727], abs=1e-3)


def test_sigma_table_endpoints_and_shift():
    t = sigma_table(5.0)
    assert len(t) == 1000 and t[0] == 1.0
    assert t[-1] == pytest.approx(5 * 0.001 / (1 + 4 * 0.001))
    assert all(a > b for a, b in zip(t, t[1:]))
    assert sigma_table(1.0)[250] == pytest.approx(0.75)


def test_unwarped_lookup_is_nearest_table_entry():
    # CausVid's unwarped list: a raw t looks up sigma ~= t / 1000 in the dense table.
    assert sigma_for_timestep(757, 8.0) == pytest.approx(0.757, abs=2e-3)
    assert sigma_for_timestep(0, 5.0) == 0.0


def test_schedule_sigmas_and_cache_step():
    s = make_schedule(SamplingConfig())
    assert s.timesteps == pytest.approx((1000.0, 937.5, 833.3333, 625.0), abs=1e-3)
    assert s.sigmas == pytest.approx((1.0, 0.9375, 0.833333, 0.625, 0.0), abs=1e-5)
    assert s.cache_timestep == 0.0
    e = make_schedule(SamplingConfig(shift=3.0, sampler="euler"))
    assert e.sigmas[:4] == pytest.approx((1.0, 0.9, 0.75, 0.5))


def test_sampler_math_roundtrip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    sigma = 0.7
    x_t = renoise(x0, eps, sigma)
    v = eps - x0  # the true velocity
    torch.testing.assert_close(x0_from_velocity(x_t, v, sigma), x0)
    # An exact Euler step along a straight flow lands on the same path.
    torch.testing.assert_close(euler_step(x_t, v, sigma, 0.2), renoise(x0, eps, 0.2))
    torch.testing.assert_close(euler_step(x_t, v, sigma, 0.0), x0)
