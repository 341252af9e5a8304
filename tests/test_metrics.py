import numpy as np
import pytest
import torch

from vidcascade.eval.metrics import boundary_jump, centroid_jerk, psnr, ssim


def test_ssim_and_psnr_match_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 32, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, size=a.shape), 0, 255).astype(np.uint8)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).double()
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).double()
    ref = tm.structural_similarity_index_measure(tb, ta, data_range=255.0)
    assert ssim(b, a) == pytest.approx(float(ref), abs=1e-6)
    ref_psnr = tm.peak_signal_noise_ratio(tb, ta, data_range=255.0)
    assert psnr(b, a) == pytest.approx(float(ref_psnr), abs=1e-6)
    assert psnr(a, a) == 100.0 and ssim(a, a) == pytest.approx(1.0)


def test_boundary_jump_sees_a_seam():
    t, fpb = 12, 3
    smooth = np.stack([np.full((4, 4, 3), 10 * i, np.uint8) for i in range(t)])
    assert boundary_jump(smooth, fpb) == pytest.approx(1.0)
    seam = smooth.astype(int)
    for b in range(fpb, t, fpb):
        seam[b:] += 20  # an extra jump at every block start
    assert boundary_jump(np.clip(seam, 0, 255).astype(np.uint8), fpb) == pytest.approx(3.0)


def test_centroid_jerk():
    line = np.stack([np.arange(10.0), np.zeros(10)], 1)
    assert centroid_jerk(line) == 0.0
    shaky = line + np.array([[0, (-1) ** i] for i in range(10)])
    assert centroid_jerk(shaky) == pytest.approx(4.0)
