"""DreamBooth on the tiny latent backend: learns, is seeded, checkpoints, reloads and resumes exactly."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from db3d import dreambooth
from db3d.diffusion import build_backend


def fresh(cfg: dict, space: str = "latent"):
    return build_backend(dict(cfg, backend="tiny", models=dict(cfg["models"], tiny_space=space)), device="cpu")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return {"inst": torch.rand(3, 3, 64, 64, generator=g), "cls": torch.rand(2, 3, 64, 64, generator=g)}


def run(backend, data, tmp_path=None, *, steps=4, seed=0, lr=1e-4, lora_rank=0, checkpoints=None,
        resume_path=None, resume_every=10, prompts="a sks dog"):
    return dreambooth.train(backend, data["inst"], prompts, data["cls"], "a dog", steps=steps, lr=lr,
                            batch_size=1, prior_loss_weight=1.0, train_text_encoder=False, lora_rank=lora_rank,
                            seed=seed, checkpoints=checkpoints or {}, resume_path=resume_path,
                            resume_every=resume_every, progress=False)


def fixed_eval_loss(backend, images) -> float:
    """Loss at a fixed set of (t, noise) draws: deterministic, so before/after compare fairly."""
    with torch.no_grad():
        return float(torch.stack([backend.training_loss(images, ["a sks dog"] * len(images),
                                                        generator=torch.Generator().manual_seed(1000 + k)).mean()
                                  for k in range(4)]).mean())


def state(backend) -> dict:
    return {k: v.clone() for k, v in backend.finetuned_state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_its_loss(tiny_cfg, data):
    b = fresh(tiny_cfg)
    before = fixed_eval_loss(b, data["inst"])
    records = run(b, data, steps=25, lr=1e-3)
    after = fixed_eval_loss(b, data["inst"])
    assert len(records) == 25 and [r["step"] for r in records] == list(range(1, 26))
    assert all(r["loss"] == pytest.approx(r["loss_instance"] + r["loss_prior"], rel=1e-5) for r in records)
    assert after < 0.8 * before, (before, after)
    assert not any(p.requires_grad for p in b.parameters())  # left frozen for SDS


def test_same_seed_same_curve(tiny_cfg, data):
    a = run(fresh(tiny_cfg), data, steps=3, seed=5)
    b = run(fresh(tiny_cfg), data, steps=3, seed=5)
    c = run(fresh(tiny_cfg), data, steps=3, seed=6)
    assert a == b and a != c


def test_checkpoints_at_steps_and_reload(tiny_cfg, data, tmp_path):
    base = state(fresh(tiny_cfg))
    b = fresh(tiny_cfg)
    ck = {0: tmp_path / "c0.safetensors", 2: tmp_path / "partial.safetensors", 5: tmp_path / "full.safetensors"}
    run(b, data, steps=5, checkpoints=ck)
    assert all(p.exists() for p in ck.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in ck.values())  # no temp files
    final = state(b)
    two = fresh(tiny_cfg)
    run(two, data, steps=2)
    assert same(load_file(ck[0]), base)
    assert same(load_file(ck[2]), state(two))
    assert same(load_file(ck[5]), final) and not same(load_file(ck[2]), final)

    reloaded = fresh(tiny_cfg)
    reloaded.load_finetuned(ck[5])  # restores exactly: same weights, same predictions
    assert same(state(reloaded), final)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = b.encode_text(["a sks dog"])
    with torch.no_grad():
        assert torch.equal(reloaded.predict_noise(x, 500, cond), b.predict_noise(x, 500, cond))


def test_lora_saves_only_adapters(tiny_cfg, data, tmp_path):
    b = fresh(tiny_cfg)
    unet_before = {k: v.clone() for k, v in b.unet.state_dict().items()}
    run(b, data, steps=3, lr=1e-3, lora_rank=2)
    path = tmp_path / "lora.safetensors"
    b.save_finetuned(path)
    saved = load_file(path)
    assert saved and all("lora_" in k for k in saved)
    base_now = {k.replace(".base_layer", ""): v for k, v in b.unet.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base_now[k], v) for k, v in unet_before.items())  # base weights frozen
    reloaded = fresh(tiny_cfg)
    reloaded.load_finetuned(path)  # adds the adapters, then loads them
    assert same(state(reloaded), state(b))


def test_resume_matches_uninterrupted(tiny_cfg, data, tmp_path):
    full = fresh(tiny_cfg)
    expected = run(full, data, steps=6)

    crashing = fresh(tiny_cfg)
    calls = {"n": 0}
    original = crashing.training_loss

    def crash_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    crashing.training_loss = crash_at_step_5
    resume = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run(crashing, data, steps=6, resume_path=resume, resume_every=2)
    assert resume.exists()

    resumed = fresh(tiny_cfg)
    records = run(resumed, data, steps=6, resume_path=resume, resume_every=2)
    assert records == expected
    assert same(state(resumed), state(full))
    assert not resume.exists()  # removed once finished


def test_resume_restores_a_checkpoint_snakemake_deleted(tiny_cfg, data, tmp_path):
    """Snakemake deletes a rule's outputs before rerunning it; a run resumed past the partial
    checkpoint's step restores it (from its hidden hard link), equal to the uninterrupted one's."""
    ckpts = lambda d: {2: d / "partial.safetensors", 6: d / "full.safetensors"}  # noqa: E731
    straight = tmp_path / "straight"
    run(fresh(tiny_cfg), data, steps=6, checkpoints=ckpts(straight))
    crashing, calls = fresh(tiny_cfg), {"n": 0}
    original = crashing.training_loss

    def crash_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    crashing.training_loss = crash_at_step_5
    out, resume = tmp_path / "resumed", tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run(crashing, data, steps=6, checkpoints=ckpts(out), resume_path=resume, resume_every=2)
    (out / "partial.safetensors").unlink()  # what Snakemake does before the rerun
    run(fresh(tiny_cfg), data, steps=6, checkpoints=ckpts(out), resume_path=resume, resume_every=2)
    for name in ("partial.safetensors", "full.safetensors"):
        assert same(load_file(out / name), load_file(straight / name)), name
    assert sorted(p.name for p in out.iterdir()) == ["full.safetensors", "partial.safetensors"]  # no copies left


def test_default_policy_writes_resume_states_by_steps_while_cheap(tiny_cfg, data, tmp_path, monkeypatch):
    """A short job (far under RESUME_EVERY_S) still leaves a resume state every RESUME_EVERY_STEPS
    steps, so a kill does not send it back to step 0; the saves stop while one costs more than
    RESUME_MAX_OVERHEAD of the training time since the last."""
    monkeypatch.setattr(dreambooth, "RESUME_EVERY_STEPS", 2)
    saved = []
    real_save = dreambooth.torch_save
    monkeypatch.setattr(dreambooth, "torch_save", lambda obj, path: (saved.append(obj["step"]), real_save(obj, path)))
    resume = tmp_path / "resume.pt"
    monkeypatch.setattr(dreambooth, "RESUME_MAX_OVERHEAD", float("inf"))  # every write is cheap enough
    run(fresh(tiny_cfg), data, steps=7, resume_path=resume, resume_every=None)
    assert saved == [2, 4, 6] and not resume.exists()
    saved.clear()
    monkeypatch.setattr(dreambooth, "RESUME_MAX_OVERHEAD", 0.0)  # any write is too dear: only the first
    run(fresh(tiny_cfg), data, steps=7, resume_path=resume, resume_every=None)
    assert saved == [2]


def test_multiview_prompts_and_class_images(tiny_cfg, data):
    b = fresh(tiny_cfg, "pixel")
    prompts = [b.view_prompt("a sks dog", d) for d in ("front", "side", "back")]
    records = run(b, data, steps=2, prompts=prompts)
    assert len(records) == 2
    with pytest.raises(ValueError):
        run(b, data, steps=1, prompts=prompts[:2])
    imgs = dreambooth.generate_class_images(b, "a dog", 3, num_steps=2, seed=1, batch_size=2, progress=False)
    again = dreambooth.generate_class_images(b, "a dog", 3, num_steps=2, seed=1, batch_size=2, progress=False)
    assert imgs.shape == (3, 3, 64, 64) and imgs.min() >= 0 and imgs.max() <= 1 and torch.equal(imgs, again)
