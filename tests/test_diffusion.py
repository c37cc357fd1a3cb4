"""Backend contract (docs/ARCHITECTURE.md, db3d.diffusion) on the tiny latent and pixel models."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from db3d.diffusion import VIEW_DIRECTIONS, build_backend
from db3d.errors import ModelNotFoundError

SPACES = ["latent", "pixel"]


def make(cfg: dict, space: str, device: str = "cpu"):
    cfg = dict(cfg, models=dict(cfg["models"], tiny_space=space), backend="tiny")
    return build_backend(cfg, device=device)


@pytest.fixture(scope="module", params=SPACES)
def backend(request):
    from db3d.config import load_config

    return make(load_config(), request.param)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_attributes(backend):
    b = backend
    assert b.name == "tiny" and b.image_size == 64 and b.device.type == "cpu" and b.dtype == torch.float32
    assert b.num_train_timesteps == 1000 and b.alphas_cumprod.shape == (1000,)
    assert bool((b.alphas_cumprod[1:] < b.alphas_cumprod[:-1]).all())  # decreasing: more noise with t
    if b.is_latent:
        assert (b.model_channels, b.latent_size) == (4, 16)
    else:
        assert (b.model_channels, b.latent_size) == (3, 64)
    counts = b.parameter_counts()
    assert 0.5e6 < counts["unet"] < 3e6 and counts["text_encoder"] < 5e6


def test_shapes_and_ranges(backend):
    b = backend
    C, s = b.model_channels, b.latent_size
    emb = b.encode_text(["a sks dog", "a dog, side view"])
    assert emb.shape == (2, 77, 64) and emb.dtype == torch.float32
    assert not torch.allclose(emb[0], emb[1])

    images = torch.rand(2, 3, 48, 48, generator=gen(0), requires_grad=True)
    x0 = b.encode_images(images)  # resized 48 -> 64 first
    assert x0.shape == (2, C, s, s) and torch.isfinite(x0).all()
    x0.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # differentiable (through the VAE)

    out = b.decode(x0.detach())
    assert out.shape == (2, 3, 64, 64) and out.min() >= 0 and out.max() <= 1

    noise = torch.randn(2, C, s, s, generator=gen(1))
    t = torch.tensor([10, 900])
    x_t = b.add_noise(x0.detach(), noise, t)
    ab = b.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(x_t, ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise)

    eps = b.predict_noise(x_t, t, emb)
    assert eps.shape == (2, C, s, s) and torch.isfinite(eps).all()
    eps1 = b.predict_noise(x_t, 500, emb[:1])  # scalar t and a single embedding broadcast
    assert eps1.shape == (2, C, s, s)

    loss = b.training_loss(torch.rand(3, 3, 64, 64, generator=gen(2)), ["a dog"] * 3, generator=gen(3))
    assert loss.shape == (3,) and torch.isfinite(loss).all() and (loss > 0).all()

    imgs = b.sample(["a dog", "a cat"], num_steps=3, guidance_scale=5.0, generator=gen(4))
    assert imgs.shape == (2, 3, 64, 64) and imgs.min() >= 0 and imgs.max() <= 1 and imgs.std() > 0


def test_cfg_is_batched_and_exact(backend):
    b = backend
    C, s = b.model_channels, b.latent_size
    x_t = torch.randn(2, C, s, s, generator=gen(5))
    t = torch.tensor([300, 700])
    cond, uncond = b.encode_text(["a sks dog", "a sks dog"]), b.encode_text([""])
    with torch.no_grad():
        eps_c = b.predict_noise(x_t, t, cond)
        eps_u = b.predict_noise(x_t, t, uncond)
        assert not torch.allclose(eps_c, eps_u)
        assert torch.allclose(b.predict_noise(x_t, t, cond, uncond, guidance_scale=1.0), eps_c, atol=1e-5)
        guided = b.predict_noise(x_t, t, cond, uncond, guidance_scale=7.5)
        assert torch.allclose(guided, eps_u + 7.5 * (eps_c - eps_u), atol=1e-4)

    calls = []
    hook = b.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with torch.no_grad():
            b.predict_noise(x_t, t, cond, uncond, guidance_scale=7.5)
    finally:
        hook.remove()
    assert calls == [4]  # one UNet call on cat([uncond, cond])


def test_img2img_strength(backend):
    b = backend
    init = torch.rand(2, 3, 64, 64, generator=gen(6))
    kw = dict(prompts=["a dog"] * 2, num_steps=20, guidance_scale=1.0, init_images=init)
    same = b.sample(generator=gen(7), strength=0.0, **kw)
    assert torch.allclose(same, init)
    full = b.sample(generator=gen(7), strength=1.0, **kw)
    assert (full - init).abs().mean() > 0.1
    if not b.is_latent:  # one DDIM step from t~50 changes a pixel image only slightly
        near = b.sample(generator=gen(7), strength=0.05, **kw)
        assert (near - init).abs().mean() < 0.05 < (full - init).abs().mean()
    with pytest.raises(ValueError):
        b.sample(generator=gen(7), strength=1.5, **kw)


@pytest.mark.parametrize("space", SPACES)
def test_same_seed_same_weights_and_samples(tiny_cfg, space):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = make(tiny_cfg, space)
    assert torch.equal(torch.rand(3), expected_next)  # building leaves the caller's RNG alone
    tiny_cfg["seed"] = 99  # the experiment seed does not change the base model
    b = make(tiny_cfg, space)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = a.sample(["a dog"], num_steps=3, guidance_scale=3.0, generator=gen(11))
    y = b.sample(["a dog"], num_steps=3, guidance_scale=3.0, generator=gen(11))
    z = b.sample(["a dog"], num_steps=3, guidance_scale=3.0, generator=gen(12))
    assert torch.equal(x, y) and not torch.allclose(x, z)


def test_ddim_clipped_x0_keeps_the_overshoot_direction(tiny_cfg, monkeypatch):
    """Pixel models clip x0 to [-1, 1] in DDIM; the next step must use the epsilon of the CLIPPED
    x0. With diffusers' default (raw epsilon), a guided prediction far outside [-1, 1] (what high
    classifier-free guidance gives) was reversed: the toy prior sampled the complementary colour."""
    b = make(tiny_cfg, "pixel")
    assert b.scheduler_config["clip_sample"]
    direction = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # red in [-1, 1]

    def overshooting_eps(x_t, t, cond, uncond=None, guidance_scale=1.0):
        ab = b._abar(b._timesteps(t, x_t.shape[0]))
        x0 = 5.0 * direction.expand_as(x_t)  # 5x beyond the valid range
        return (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt()

    monkeypatch.setattr(b, "predict_noise", overshooting_eps)
    out = b.sample(["a red thing"], num_steps=20, guidance_scale=1.0, generator=gen(0))
    red, green, blue = out[0].mean(dim=(1, 2)).tolist()
    assert red > 0.95 and green < 0.05 and blue < 0.05, (red, green, blue)


def test_vae_runs_in_its_dtype_with_classic_attention(tiny_cfg):
    """The VAE's defaults (DiffusionBackend: no autocast, AttnProcessor) and the processor switch."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    b = make(tiny_cfg, "latent")
    kinds = lambda: {type(p) for p in b.vae.attn_processors.values()}  # noqa: E731
    assert b.vae_autocast is False and kinds() == {AttnProcessor}
    img = torch.rand(1, 3, b.image_size, b.image_size, generator=gen(0))
    z = b.encode_images(img)
    b.set_vae_attention("sdpa")
    assert kinds() == {AttnProcessor2_0}
    torch.testing.assert_close(b.encode_images(img), z, rtol=1e-4, atol=1e-5)  # same attention, other kernel
    b.set_vae_attention("classic")
    with pytest.raises(ValueError, match="sdpa or classic"):
        b.set_vae_attention("flash")


def test_view_prompt(backend):
    assert backend.view_prompt("a sks dog", "front") == "a sks dog, front view"
    assert backend.view_prompt("a sks dog", "side view") == "a sks dog, side view"
    assert [backend.view_prompt("p", d).split(", ")[1] for d in VIEW_DIRECTIONS] == \
        ["front view", "side view", "back view", "overhead view"]
    with pytest.raises(ValueError):
        backend.view_prompt("p", "upside")


@pytest.mark.parametrize("backend_name,model", [
    ("sd", "nonexistent-org/no-such-sd-model"),
    ("sd", "/nonexistent/folder/sd21"),
    ("sd", "models/sd21"),  # relative, below the repository's models/: a missing folder, not a hub id
    ("if", "nonexistent-org/no-such-if-model"),
])
def test_missing_model_is_one_line(tiny_cfg, monkeypatch, backend_name, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    cfg = dict(tiny_cfg, backend=backend_name, models=dict(tiny_cfg["models"], **{backend_name: model}))
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        build_backend(cfg, device="cpu")
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "\n" not in msg
    label = "Stable Diffusion" if backend_name == "sd" else "DeepFloyd IF"
    assert label in msg and model.rstrip("/").split("/")[-1] in msg
    assert "HF_HUB_OFFLINE" in msg and f"models.{backend_name}" in msg and "hf download" in msg
    if "/" in model and not model.startswith("nonexistent-org"):
        assert f"tried local folder {model} (no such folder)" in msg and f"--local-dir {model}" in msg
    exc = info.value  # no chained traceback behind the one line
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_random_full_size_configs():
    """`models.sd|if: random` builds the real architectures (counted on the meta device: no memory)."""
    from db3d.diffusion.deepfloyd import build_random_if
    from db3d.diffusion.sd import build_random_sd

    sd = build_random_sd(torch.device("meta"), torch.float16)
    assert sd.parameter_counts() == {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}
    assert (sd.image_size, sd.latent_size, sd.model_channels, sd.is_latent) == (512, 64, 4, True)
    df = build_random_if(torch.device("meta"), torch.float16)
    counts = df.parameter_counts()
    assert counts["text_encoder"] == 4_762_310_656 and 4.2e9 < counts["unet"] < 4.5e9
    assert (df.image_size, df.model_channels, df.is_latent) == (64, 3, False)
    ids, mask = df.tokenizer(["a sks dog, front view", ""])
    assert ids.shape == (2, 77) and int(ids.max()) < 32000 and ids[1, 0] == 1 and mask[1].sum() == 1
