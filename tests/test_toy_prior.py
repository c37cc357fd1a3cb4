"""The `toy` backend (db3d/diffusion/toy.py) and its training (db3d/synth/prior.py), on small configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from db3d.diffusion import build_backend
from db3d.diffusion.toy import IMAGE_SIZE, load_toy, new_toy, save_toy
from db3d.errors import ModelNotFoundError
from db3d.synth import prior as prior_mod
from db3d.synth.prior import PriorTrainer, lr_at, resolve_prior_cfg, train_prior

CAMERA = {"radius": [1.5, 2.0], "elevation_deg": [-10, 45], "fov_deg": [40, 70]}
SMALL = {"num_images": 16, "steps": 50, "batch_size": 4, "learning_rate": 2e-3, "warmup_steps": 5,
         "sample_steps": 2, "guidance_scale": 3.0, "log_every": 10, "seed": 0}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toy") / "models" / "toy"
    log = train_prior(SMALL, CAMERA, out, progress=False)
    return out, log


def test_train_prior_writes_everything(trained):
    out, log = trained
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "model.safetensors", "samples.png", "train_log.json"]  # no tmp, no resume state
    disk = json.loads((out / "train_log.json").read_text())
    for key in ("steps", "batch_size", "num_images", "wall_time_s", "device", "threads", "loss_curve",
                "final_loss", "prior_cfg", "sha256"):
        assert key in disk, key
    assert disk["steps"] == 50 and disk["batch_size"] == 4 and disk["num_images"] == 16
    assert disk["prior_cfg"]["learning_rate"] == 2e-3 and disk["device"] == "cpu"
    assert [s for s, _ in disk["loss_curve"]] == [10, 20, 30, 40, 50]
    from db3d.diffusion.toy import file_sha256

    assert disk["sha256"] == file_sha256(out / "model.safetensors")
    assert json.loads((out / "config.json").read_text())["sha256"] == disk["sha256"]
    from PIL import Image

    with Image.open(out / "samples.png") as im:  # 3 classes x (4 colours x 2 views), 3x upscaled tiles
        assert im.width > 8 * 3 * IMAGE_SIZE and im.height > 3 * 3 * IMAGE_SIZE


def test_loss_decreases(trained):
    _, log = trained
    curve = [loss for _, loss in log["loss_curve"]]
    assert all(v == v for v in curve)  # finite
    assert curve[-1] < 0.7 * curve[0], curve


def test_load_trained_and_build_backend(trained):
    out, log = trained
    b = build_backend({"backend": "toy", "models": {"toy": str(out), "toy_sha256": None}, "device": "cpu",
                       "precision": "fp32", "toy_prior": None})
    assert b.name == "toy" and b.image_size == 32 and not b.is_latent and b.model_channels == 3
    assert b.model_id == f"toy-{log['sha256'][:12]}"
    assert b.view_prompt("a sks mug", "back") == "a sks mug, back view"
    imgs = b.sample(["a red mug, front view", "a blue house"], num_steps=2, guidance_scale=3.0, generator=gen(0))
    assert imgs.shape == (2, 3, 32, 32) and imgs.min() >= 0 and imgs.max() <= 1
    again = b.sample(["a red mug, front view", "a blue house"], num_steps=2, guidance_scale=3.0, generator=gen(0))
    assert torch.equal(imgs, again)
    init = torch.rand(2, 3, 48, 48, generator=gen(1))
    i2i = b.sample(["a red mug", "a mug"], num_steps=4, guidance_scale=2.0, generator=gen(2), init_images=init,
                   strength=0.5)
    assert i2i.shape == (2, 3, 32, 32)
    emb = b.encode_text(["a sks mug, back view", ""])
    assert emb.shape == (2, 24, 64)
    ids, mask = b.tokenizer(["a sks mug, back view"])
    assert int(mask.sum()) < 24  # not truncated
    # the EMA weights were saved, and load gives back exactly the saved tensors
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert torch.equal(saved["unet.conv_in.weight"], b.unet.conv_in.weight)


def test_save_load_round_trip(tmp_path):
    b = new_toy("cpu", seed=3)
    path = save_toy(b, tmp_path / "m", {"note": "round trip"})
    assert path == tmp_path / "m" / "model.safetensors" and (tmp_path / "m" / "config.json").is_file()
    c = load_toy(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32, generator=gen(0))
    t = torch.tensor([10, 700])
    cond, uncond = b.encode_text(["a red mug", "a sks house, side view"]), b.encode_text(["", ""])
    assert torch.equal(b.predict_noise(x, t, cond, uncond, 4.0), c.predict_noise(x, t, cond, uncond, 4.0))
    assert torch.equal(cond, c.encode_text(["a red mug", "a sks house, side view"]))
    assert c.model_id.startswith("toy-") and len(c.model_id) == len("toy-") + 12
    assert json.loads((tmp_path / "m" / "config.json").read_text())["meta"] == {"note": "round trip"}
    # another seed is another model
    assert not torch.equal(new_toy("cpu", seed=4).unet.conv_in.weight, b.unet.conv_in.weight)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        build_backend({"backend": "toy", "models": {"toy": str(tmp_path / "nowhere"), "toy_sha256": None}, "device": "cpu",
                       "precision": "fp32", "toy_prior": None})
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "model.safetensors") in msg
    assert "dvc pull models/toy.dvc" in msg and "snakemake --cores all models/toy/model.safetensors" in msg
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelNotFoundError) as e:
        load_toy(bad)
    assert "\n" not in str(e.value) and "unusable" in str(e.value)
    from safetensors.torch import save_file

    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(bad / "model.safetensors"), metadata={"db3d": "other"})
    with pytest.raises(ModelNotFoundError) as e:
        load_toy(bad)
    assert "\n" not in str(e.value)
    # right format, wrong weights
    b = new_toy("cpu")
    save_toy(b, bad, {})
    from safetensors import safe_open

    with safe_open(str(bad / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    save_file({"unet.conv_in.weight": torch.zeros(3)}, str(bad / "model.safetensors"), metadata=meta)
    with pytest.raises(ModelNotFoundError) as e:
        load_toy(bad)
    assert "\n" not in str(e.value) and "do not fit" in str(e.value)


@pytest.mark.parametrize("device, cuda, want", [("cuda", True, "cuda"), ("auto", True, "cuda"), ("auto", False, "cpu"),
                                                ("cpu", True, "cpu")])
def test_toy_prior_command_trains_on_the_config_device(tmp_path, monkeypatch, device, cuda, want):
    """`python -m db3d toy-prior` passes the config's device to train_prior (it once trained on the
    CPU whatever the config said)."""
    from db3d import cli

    seen = {}

    def fake_train(prior_cfg, camera_cfg, out_dir, **kw):
        seen.update(prior_cfg=prior_cfg, camera=camera_cfg, out=out_dir, **kw)
        return {}

    monkeypatch.setattr(prior_mod, "train_prior", fake_train)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    # a host with one GPU as the job's device lease sees it (db3d.devices), or none
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0" if cuda else "")
    monkeypatch.setenv("DB3D_LEASE_DIR", str(tmp_path / "leases"))
    cfg = {"device": device, "toy_prior": SMALL, "nerf": {"camera": CAMERA}}
    assert cli.main(["toy-prior", "--config-json", json.dumps(cfg), "--out", str(tmp_path / "toy")]) == 0
    assert str(seen["device"]) == want and seen["prior_cfg"] == SMALL and seen["camera"] == CAMERA
    assert Path(seen["out"]) == tmp_path / "toy"


def test_a_prior_that_is_not_the_configs_is_refused_in_one_line(trained):
    """Another sha256 than models.toy_sha256, another resolution, or another recipe (stale): one line
    naming the file and the fix; sample-only keys do not make a checkpoint stale."""
    out, log = trained
    path = str(out / "model.safetensors")

    def build(sha=None, prior_cfg=None):
        return build_backend({"backend": "toy", "models": {"toy": str(out), "toy_sha256": sha},
                              "device": "cpu", "precision": "fp32", "toy_prior": prior_cfg})

    assert build(log["sha256"], SMALL).sha256 == log["sha256"]          # the pinned one, this recipe
    assert build(None, {**SMALL, "sample_steps": 7, "guidance_scale": 1.0}).sha256 == log["sha256"]
    cases = [
        ((("0" * 64), SMALL), ["models.toy_sha256 pins 0000", "dvc pull models/toy.dvc",
                               f"models.toy_sha256: {log['sha256']}"]),
        ((None, {**SMALL, "resolution": 64}), ["trained at 32 px", "toy_prior.resolution is 64",
                                               "--forcerun toy_prior"]),
        ((None, {**SMALL, "steps": 51}), ["is stale", "steps 50 (config: 51)", "--forcerun toy_prior"]),
    ]
    for args, needles in cases:
        with pytest.raises(ModelNotFoundError) as e:
            build(*args)
        msg = str(e.value)
        assert "\n" not in msg and path in msg, msg
        for needle in needles:
            assert needle in msg, (needle, msg)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_dreambooth_on_toy(trained, tmp_path, lora_rank):
    from db3d.dreambooth import train

    out, _ = trained
    b = load_toy(out)
    inst = torch.rand(2, 3, 32, 32, generator=gen(0))
    cls = torch.rand(2, 3, 32, 32, generator=gen(1))
    ckpt = tmp_path / "full.safetensors"
    records = train(b, inst, "a sks mug, front view", cls, "a mug", steps=2, lr=1e-4, batch_size=1,
                    prior_loss_weight=1.0, train_text_encoder=True, lora_rank=lora_rank, seed=0,
                    checkpoints={2: ckpt}, resume_path=None, progress=False)
    assert len(records) == 2 and ckpt.is_file()
    fresh = load_toy(out)
    x = torch.randn(1, 3, 32, 32, generator=gen(2))
    cond = b.encode_text(["a sks mug"])
    before = fresh.predict_noise(x, 500, fresh.encode_text(["a sks mug"]))
    fresh.load_finetuned(ckpt)
    assert torch.equal(fresh.encode_text(["a sks mug"]), cond)
    after = fresh.predict_noise(x, 500, cond)
    assert torch.equal(after, b.predict_noise(x, 500, cond)) and not torch.equal(after, before)


def test_lr_schedule_and_cfg():
    cfg = resolve_prior_cfg({"steps": 100, "warmup_steps": 10, "learning_rate": 1.0})
    assert lr_at(1, cfg) == pytest.approx(0.1) and lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5) and lr_at(100, cfg) == pytest.approx(0.0, abs=1e-12)
    from db3d.errors import ConfigError

    with pytest.raises(ConfigError):
        resolve_prior_cfg({"stepz": 3})
    with pytest.raises(ConfigError):
        resolve_prior_cfg({"resolution": 64})


def test_trainer_loss_is_the_backends():
    """Without Min-SNR weighting the trainer's loss is `training_loss` itself (same draws)."""
    imgs = torch.rand(3, 3, 32, 32, generator=gen(0))
    caps = ["a red mug", "", "a house, back view"]
    trainer = PriorTrainer({"min_snr_gamma": 0.0}, imgs, caps)
    mse, w = trainer._losses(imgs, caps, gen(5))
    assert torch.equal(mse, trainer.backend.training_loss(imgs, caps, generator=gen(5))) and bool((w == 1).all())
    trainer.cfg["min_snr_gamma"] = 5.0
    mse5, w5 = trainer._losses(imgs, caps, gen(5))
    assert torch.equal(mse5, mse) and bool((w5 > 0).all() and (w5 <= 1).all())


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    cfg = dict(SMALL, num_images=8, steps=6, batch_size=2, sample_steps=1, log_every=2)
    whole = train_prior(cfg, CAMERA, tmp_path / "whole", progress=False)

    real_step = PriorTrainer.train_step

    def dying_step(self, step):
        if step == 4:
            raise KeyboardInterrupt("killed")
        return real_step(self, step)

    monkeypatch.setattr(PriorTrainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_prior(cfg, CAMERA, tmp_path / "cut", progress=False, resume_every_s=0.0)
    assert (tmp_path / "cut" / prior_mod.RESUME_FILE).is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    monkeypatch.setattr(PriorTrainer, "train_step", real_step)
    resumed = train_prior(cfg, CAMERA, tmp_path / "cut", progress=False)
    assert resumed["resumed_from_step"] == 3
    assert resumed["sha256"] == whole["sha256"]
    assert resumed["loss_curve"] == whole["loss_curve"]
    assert not (tmp_path / "cut" / prior_mod.RESUME_FILE).exists()
