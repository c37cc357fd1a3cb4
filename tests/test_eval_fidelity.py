"""Subject fidelity (DINO, CLIP-I): the pairwise mean, the tiny DINO, the real DINO's loading and errors."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub in tests

from db3d.errors import DataError, ModelNotFoundError  # noqa: E402
from db3d.eval.fidelity import fidelity, pairwise_cosine, photo_resolution  # noqa: E402


def _images(seed: int, n: int = 2, size: int = 48) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_fidelity_is_mean_pairwise_cosine():
    views = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    photos = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    s = 0.5 ** 0.5
    assert pairwise_cosine(views, photos).flatten().tolist() == pytest.approx([1.0, s, 0.0, 0.0, s, 1.0])
    assert fidelity(views, photos) == pytest.approx((2 + 2 * s) / 6)
    assert fidelity(views[:1], views[:1].repeat(3, 1)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fidelity(views, torch.ones(2, 3))


@pytest.mark.parametrize("kind", ["dino", "clip"])
def test_fidelity_of_identical_images_is_one_and_lower_for_others(kind):
    """Through a fixed (tiny, seeded) embedder: a view scores 1 against itself, less against others."""
    from db3d.eval.clip import load_clip
    from db3d.eval.dino import load_dino

    model = load_dino() if kind == "dino" else load_clip("ViT-B-32")
    a, b = _images(0, 1), _images(1, 1)
    ea, eb = model.encode_images(a), model.encode_images(b)
    assert fidelity(ea, ea) == pytest.approx(1.0, abs=1e-6)
    assert fidelity(ea, eb) < 1.0 - 1e-4
    # against photos that include the view's own image: the mean of 1 and the cross similarity
    both = model.encode_images(torch.cat([a, b]))
    assert fidelity(ea, both) == pytest.approx((1.0 + fidelity(ea, eb)) / 2, abs=1e-6)


def test_tiny_dino_deterministic_and_labelled():
    from transformers import ViTModel

    from db3d.eval.dino import TINY_DINO, load_dino

    a, b = load_dino("facebook/dino-vits16"), load_dino("facebook/dino-vits16")
    assert a.label == "tiny-random(dino-vits16)" and a.random_weights and isinstance(a.model, ViTModel)
    assert a.model.config.hidden_size == TINY_DINO["hidden_size"]
    imgs = _images(3, 3, 40)
    ea, eb = a.encode_images(imgs), b.encode_images(imgs)
    assert ea.shape == (3, 64) and torch.allclose(ea.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(ea, eb)  # same weights on every build
    assert not torch.allclose(ea[0], ea[1], atol=1e-3)  # and it sees the image
    # the global RNG is left alone (the stand-in is built under a forked RNG)
    torch.manual_seed(123)
    x = torch.rand(1)
    torch.manual_seed(123)
    load_dino()
    assert torch.equal(torch.rand(1), x)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No network and an empty Hugging Face cache, whatever was imported before."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    try:
        import huggingface_hub.constants as hfc

        monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"), raising=False)
    except ImportError:
        pass
    return tmp_path


def test_missing_real_dino_is_one_line_error(offline_hub):
    from db3d.eval.dino import load_dino

    with pytest.raises(ModelNotFoundError) as err:
        load_dino("facebook/dino-vits16", offline_tiny=False)
    msg = str(err.value)
    assert "\n" not in msg and "facebook/dino-vits16" in msg and "HF_HUB_OFFLINE" in msg
    assert "local folder" in msg and "backend: toy or tiny" in msg
    missing = offline_hub / "no-such-dino"
    with pytest.raises(ModelNotFoundError) as err:
        load_dino(str(missing), offline_tiny=False)
    assert "\n" not in str(err.value) and str(missing) in str(err.value)


def test_real_dino_from_a_local_folder(offline_hub):
    """The real path (`models.dino` = a local folder), with a tiny ViT saved by transformers."""
    from db3d.eval.dino import build_tiny_dino, load_dino

    ref = build_tiny_dino()
    folder = offline_hub / "dino-local"
    ref.model.save_pretrained(folder)
    real = load_dino(str(folder), offline_tiny=False)
    assert real.label == "dino-local" and not real.random_weights and real.image_size == 64
    imgs = _images(4, 2, 64)
    assert torch.allclose(real.encode_images(imgs), ref.encode_images(imgs), atol=1e-6)


def test_photo_resolution_prefers_the_embedder_size(tmp_path):
    subject = tmp_path / "dog"
    subject.mkdir()
    (subject / "meta.json").write_text(json.dumps({"resolutions": [512, 64, 256]}))
    assert photo_resolution(subject) == 256
    (subject / "meta.json").write_text(json.dumps({"resolutions": [64, 128]}))
    assert photo_resolution(subject) == 128
    with pytest.raises(DataError, match="meta.json"):
        photo_resolution(tmp_path / "cat")
