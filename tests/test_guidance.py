"""Score distillation: gradient form, direction, NaN guard, clipping, t schedules; a CUDA smoke test."""
from __future__ import annotations

import pytest
import torch

from db3d import dreambooth
from db3d.diffusion import build_backend
from db3d.guidance import ScoreDistillation


def tiny(cfg: dict, space: str, device: str = "cpu"):
    return build_backend(dict(cfg, backend="tiny", models=dict(cfg["models"], tiny_space=space)), device=device)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pixel():
    from db3d.config import load_config

    return tiny(load_config(), "pixel")


def with_denoiser(backend, predict):
    """The backend with `predict_noise` replaced (the caller `del`s the attribute to restore it)."""
    backend.predict_noise = predict
    return backend


@pytest.fixture
def stub(pixel):
    """A denoiser that prefers a known (smooth) image: eps_hat = (x_t - sqrt(ab) target) / sqrt(1 - ab)."""
    coarse = torch.rand(1, 3, 8, 8, generator=gen(42))
    target_img = torch.nn.functional.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
    target = pixel.encode_images(target_img)

    def predict(x_t, t, cond, uncond=None, guidance_scale=1.0):
        ab = pixel.alphas_cumprod[pixel._timesteps(t, x_t.shape[0])].view(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * target) / (1 - ab).sqrt()

    with_denoiser(pixel, predict)
    yield pixel, target_img, target
    del pixel.predict_noise  # back to the class method


SDS = {"guidance_scale": 100.0, "t_range": [0.02, 0.98], "t_schedule": "random", "weighting": "sds",
       "grad_clip": 0.0}


def test_gradient_is_w_times_eps_difference(stub):
    b, _, _ = stub
    sds = ScoreDistillation(b, dict(SDS, weighting="uniform"), total_iters=10)
    x0 = torch.randn(2, 3, 64, 64, generator=gen(1), requires_grad=True)
    cond = torch.zeros(1, 77, 64)
    loss, info = sds(x0, cond, cond, step=0, generator=gen(7), latent=True)
    loss.backward()
    g = gen(7)  # replay the draws: t first, then the noise
    t = sds.sample_t(2, 0, g)
    noise = b._randn(x0.shape, g)
    expected = b.predict_noise(b.add_noise(x0.detach(), noise, t), t, cond) - noise
    assert info["t"] == t.tolist() and not info["nan"]
    assert torch.allclose(x0.grad, expected / 2, atol=1e-4)  # grad / B on x0
    assert info["grad_norm"] == pytest.approx(float(expected.norm()), rel=1e-4)


@pytest.mark.parametrize("latent", [False, True])
def test_sds_moves_render_toward_preferred_image(stub, latent):
    b, target_img, target = stub
    sds = ScoreDistillation(b, dict(SDS, grad_clip=1.0), total_iters=60)
    cond = torch.zeros(1, 77, 64)
    if latent:  # optimise model-space x0 directly (Latent-NeRF path)
        x = torch.zeros(1, 3, 64, 64, requires_grad=True)
    else:  # optimise a 32 px image in [0,1]; encode_images resizes it to 64
        x = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)

    def dist() -> float:  # in model space, where the guidance acts
        with torch.no_grad():
            return float(((x if latent else b.encode_images(x)) - target).abs().mean())

    opt = torch.optim.Adam([x], lr=0.02)
    g = gen(3)
    start = dist()
    for step in range(60):
        opt.zero_grad()
        loss, info = sds(x, cond, cond, step=step, generator=g, latent=latent)
        loss.backward()
        assert torch.isfinite(x.grad).all()
        opt.step()
    assert dist() < 0.5 * start, (start, dist())


def test_nan_guard_zeroes_and_reports(pixel):
    with_denoiser(pixel, lambda x_t, *a, **k: torch.full_like(x_t, float("nan")))
    try:
        sds = ScoreDistillation(pixel, SDS, total_iters=10)
        x = torch.rand(2, 3, 64, 64, requires_grad=True)
        loss, info = sds(x, torch.zeros(1, 77, 64), torch.zeros(1, 77, 64), step=0, generator=gen(0))
        loss.backward()
    finally:
        del pixel.predict_noise
    assert info["nan"] and sds.nan_count == 1 and info["grad_norm"] == 0.0
    assert torch.isfinite(loss) and torch.equal(x.grad, torch.zeros_like(x))


def test_deferred_info_is_the_same_info_read_later(pixel):
    """`defer=True` (NerfFit's loop) returns the numbers as one device tensor; `host_info` on its values
    gives what the immediate call gives, and counts a zeroed gradient only when it is read."""
    cond = torch.zeros(1, 77, 64)
    x0 = torch.rand(2, 3, 64, 64, generator=gen(1))
    now = ScoreDistillation(pixel, SDS, total_iters=10)(x0, cond, cond, step=3, generator=gen(7))[1]
    later = ScoreDistillation(pixel, SDS, total_iters=10)
    _, info = later(x0, cond, cond, step=3, generator=gen(7), defer=True)
    assert set(info) == {"stats"} and torch.is_tensor(info["stats"])
    assert later.host_info(info["stats"].tolist(), 3) == now and not now["nan"]

    with_denoiser(pixel, lambda x_t, *a, **k: torch.full_like(x_t, float("nan")))
    try:
        sds = ScoreDistillation(pixel, SDS, total_iters=10)
        _, info = sds(x0, cond, cond, step=0, generator=gen(0), defer=True)
    finally:
        del pixel.predict_noise
    assert sds.nan_count == 0
    assert sds.host_info(info["stats"].tolist(), 0)["nan"] and sds.nan_count == 1


def test_grad_clip_bounds_every_element(pixel):
    with_denoiser(pixel, lambda x_t, *a, **k: 1e4 * torch.ones_like(x_t))
    try:
        x0 = torch.zeros(2, 3, 64, 64, requires_grad=True)
        cond = torch.zeros(1, 77, 64)
        clipped = ScoreDistillation(pixel, dict(SDS, grad_clip=0.5), total_iters=10)
        clipped(x0, cond, cond, step=0, generator=gen(0), latent=True)[0].backward()
        assert float((x0.grad * 2).abs().max()) <= 0.5 + 1e-6
        x0.grad = None
        free = ScoreDistillation(pixel, dict(SDS, grad_clip=0.0), total_iters=10)
        free(x0, cond, cond, step=0, generator=gen(0), latent=True)[0].backward()
        assert float((x0.grad * 2).abs().max()) > 100
    finally:
        del pixel.predict_noise


def test_t_schedules_and_weighting(pixel):
    T = pixel.num_train_timesteps
    rnd = ScoreDistillation(pixel, SDS, total_iters=100)
    assert rnd.t_bounds(0) == rnd.t_bounds(99) == (int(0.02 * T), int(0.98 * T))
    ann = ScoreDistillation(pixel, dict(SDS, t_schedule="annealed"), total_iters=100)
    highs = [ann.t_bounds(s)[1] for s in (0, 25, 50, 100)]
    assert highs[0] == int(0.98 * T) and highs[-1] == int(0.02 * T) and highs == sorted(highs, reverse=True)
    assert abs(highs[2] - (int(0.98 * T) + int(0.02 * T)) / 2) <= 1  # linear
    t = ann.sample_t(500, 50, gen(0))
    assert int(t.min()) >= int(0.02 * T) and int(t.max()) <= highs[2]
    x0 = torch.zeros(1, 3, 64, 64, requires_grad=True)
    cond = torch.zeros(1, 77, 64)
    _, info = ScoreDistillation(pixel, dict(SDS, weighting="uniform"), 10)(x0, cond, cond, 0, gen(0), latent=True)
    assert info["w"] == 1.0
    _, info = ScoreDistillation(pixel, SDS, 10)(x0, cond, cond, 0, gen(0), latent=True)
    assert info["w"] == pytest.approx(1 - float(pixel.alphas_cumprod[info["t"][0]]))
    with pytest.raises(ValueError):
        ScoreDistillation(pixel, dict(SDS, t_range=[0.9, 0.1]), 10)


def test_gradient_reaches_render_through_vae(tiny_cfg):
    b = tiny(tiny_cfg, "latent")
    sds = ScoreDistillation(b, tiny_cfg["sds"], total_iters=10)
    render = torch.rand(2, 3, 32, 32, requires_grad=True)
    cond = b.encode_text([b.view_prompt("a sks dog", "front"), b.view_prompt("a sks dog", "back")])
    loss, info = sds(render, cond, b.encode_text([""]), step=0, generator=gen(0))
    loss.backward()
    assert torch.isfinite(render.grad).all() and render.grad.abs().sum() > 0 and len(info["t"]) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_sds_and_dreambooth_step(tiny_cfg, precision):
    cfg = dict(tiny_cfg, precision=precision)
    b = tiny(cfg, "latent", device="cuda")
    assert b.device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    recs = dreambooth.train(b, torch.rand(2, 3, 64, 64), "a sks dog", torch.rand(2, 3, 64, 64), "a dog",
                            steps=2, lr=1e-4, batch_size=1, prior_loss_weight=1.0, train_text_encoder=False,
                            lora_rank=0, seed=0, checkpoints={}, resume_path=None, progress=False)
    assert len(recs) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
    sds = ScoreDistillation(b, cfg["sds"], total_iters=10)
    render = torch.rand(1, 3, 64, 64, device="cuda", requires_grad=True)
    loss, info = sds(render, b.encode_text(["a sks dog"]), b.encode_text([""]), step=0, generator=g)
    loss.backward()
    assert torch.isfinite(render.grad).all() and not info["nan"]
