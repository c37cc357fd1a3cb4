"""Ground-truth metrics of synthetic subjects (db3d.eval.groundtruth) and their rows in `evaluate`.

The "NeRFs" here are analytic fields: the true object itself (every metric at its best), its
Janus twin (front painted on the back), another object, and an empty field."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from db3d.eval.groundtruth import (GT_MODEL, chamfer, ground_truth_for_run, ground_truth_metrics,  # noqa: E402
                                   psnr, ssim)
from db3d.synth.world import AnalyticField, build_synthetic_subject, janus_object, sample_object  # noqa: E402

GT_NAMES = ["chamfer", "janus_gt", "lpips", "psnr", "psnr_back", "silhouette_iou", "ssim"]


@pytest.fixture
def gt_cfg(tiny_cfg) -> dict:
    tiny_cfg["eval"].update(num_views=8, resolution=32)  # 3 back views: 135, 180, -135
    return tiny_cfg


def _run(cfg, field, obj, **kw):
    rows, info = ground_truth_metrics(cfg, field, None, {}, obj, "cpu", mesh_resolution=40, num_points=3000, **kw)
    assert sorted(r[0] for r in rows) == GT_NAMES
    return {m: v for m, v, _ in rows}, {m: n for m, _, n in rows}, info


def test_image_metrics_known_values():
    a = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    assert psnr(a, a) == 100.0 and psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1)) == pytest.approx(20.0)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(a, noisy) < 0.9).all() and (ssim(a, noisy) > ssim(a, 1 - a)).all()
    pts = torch.rand(200, 3)
    assert chamfer(pts, pts)[0] == 0.0
    assert chamfer(pts, pts + torch.tensor([0.1, 0.0, 0.0]))[0] == pytest.approx(0.1, abs=0.02)


def test_the_true_object_scores_best(gt_cfg):
    obj = sample_object("mug", "red", 5)
    values, notes, info = _run(gt_cfg, AnalyticField(obj), obj)
    # what is left at 32 px is edges: point-sampled NeRF pixels against the 2x-supersampled truth
    assert values["psnr"] > 22 and values["psnr_back"] > 22 and values["ssim"] > 0.88
    assert 0 < values["lpips"] < 0.03 and len(info["lpips_per_view"]) == 8
    assert values["silhouette_iou"] > 0.85
    # the floor of 3000 sampled points per side (~0.015 apart on this surface), not a shape error
    assert values["chamfer"] < 0.04
    assert values["janus_gt"] == 0.0 and all(n == "" for n in notes.values())
    assert [abs(a) for a in info["back_azimuths"]] == [135.0, 180.0, 135.0]
    assert all(v["mse_own"] < min(v["mse_front_rotated"], v["mse_front_mirrored"]) for v in info["janus_views"])


@pytest.mark.parametrize("class_noun", ["mug", "house"])  # the snowman: tests/test_synth.py (janus twin)
def test_a_janus_object_scores_one(gt_cfg, class_noun):
    obj = sample_object(class_noun, "yellow", 2)
    values, _, info = _run(gt_cfg, AnalyticField(janus_object(obj)), obj)
    assert values["janus_gt"] == 1.0, info["janus_views"]
    assert values["psnr_back"] < values["psnr"]  # the front half is still right


def test_another_object_and_an_empty_field(gt_cfg):
    obj = sample_object("snowman", "blue", 0)
    values, _, _ = _run(gt_cfg, AnalyticField(sample_object("house", "blue", 0)), obj)
    assert values["silhouette_iou"] < 0.6 and values["chamfer"] > 0.1 and values["psnr"] < 15
    assert values["lpips"] > 0.1  # the true object: < 0.03 (measured 0.005 at 32 px, 0.14 here)

    class Empty(nn.Module):
        bound, out_channels = 1.0, 3

        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1), requires_grad=False)

        def forward(self, x):
            return torch.zeros(x.shape[0]), torch.full((x.shape[0], 3), 0.5)

        def density(self, x):
            return self.forward(x)[0]

    values, notes, _ = _run(gt_cfg, Empty(), obj)
    assert values["silhouette_iou"] == 0.0
    assert math.isnan(values["chamfer"]) and notes["chamfer"].startswith("no NeRF surface")


def test_only_the_plain_prompt_has_ground_truth(gt_cfg, tmp_path):
    sub = tmp_path / "mug_red"
    build_synthetic_subject("mug_red", "mug", "red", 1, sub, resolutions=(16,), num_photos=2,
                            camera_cfg=gt_cfg["nerf"]["camera"])
    obj = sample_object("mug", "red", 1)
    rows, info = ground_truth_for_run(gt_cfg, AnalyticField(obj), None, {}, sub, obj, "a blue sks mug", "cpu")
    assert rows == [] and "plain prompt" in info["skipped"] and "a sks mug" in info["skipped"]


def test_evaluate_writes_ground_truth_rows(gt_cfg, tmp_path, monkeypatch):
    """`evaluate` on a real (untrained) NeRF of a synthetic subject: the `ground truth` rows appear."""
    import pandas as pd

    import db3d.nerf as dn
    from db3d.eval import evaluate

    monkeypatch.setattr("db3d.eval.mesh.MESH_RESOLUTION", 24)
    monkeypatch.setattr("db3d.eval.groundtruth.CHAMFER_POINTS", 2000)
    subjects, prompts = tmp_path / "subjects.tsv", tmp_path / "prompts.tsv"
    subjects.write_text("subject\tclass_noun\tkind\ttoken\tlicence\tcolour\tinstance_seed\n"
                        "mug_red\tmug\tobject\tsks\tsynthetic\tred\t1\n")
    prompts.write_text("subject\tprompt_id\tprompt\tset\torigin\n"
                       "mug_red\tplain\ta {token} {class_noun}\teval3d\tdb3d\n"
                       "mug_red\tblue\ta blue {token} {class_noun}\teval3d\tdb3d\n")
    cfg = gt_cfg
    cfg.update(backend="toy", device="cpu", seed=0)
    cfg["models"].update(clip=[])  # DINO alone: the tiny CLIPs take most of an evaluate on this CPU
    cfg["eval"].update(num_views=4)
    cfg["dataset"].update(prompts_table=str(prompts), subjects_table=str(subjects))
    sub = tmp_path / "data" / "mug_red"
    build_synthetic_subject("mug_red", "mug", "red", 1, sub, resolutions=(32,), num_photos=2,
                            camera_cfg=cfg["nerf"]["camera"])
    torch.manual_seed(0)
    n = cfg["nerf"]
    dn.save_nerf(tmp_path / "nerf.pt", dn.RadianceField(n["bound"], n["grid_resolution"], n["hidden_dim"]),
                 dn.Background(), {"stage": "stage3", "latent": False})
    out = evaluate(cfg, tmp_path / "nerf.pt", sub, "plain", "dreambooth3d", "seed~0", tmp_path / "eval")
    df = pd.read_csv(out, sep="\t", keep_default_na=False)
    gt = df[df.model == GT_MODEL]
    assert sorted(gt.metric) == GT_NAMES and set(gt.subject) == {"mug_red"}
    others = df[(df.model != GT_MODEL) & (df.model != "opacity")]  # "opacity": coverage / collapsed rows
    assert set(others.note) == {"random-weight models"}  # toy backend: offline stand-ins
    iou = float(gt[gt.metric == "silhouette_iou"].value.iloc[0])
    assert 0 <= iou <= 1
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    assert info["ground_truth"]["num_views"] == 4 and "ground truth" in info["timing_s"]


def test_untrained_reference_rows(gt_cfg, tmp_path, monkeypatch):
    """`python -m db3d reference --kind untrained`: the initial field at the seed (the same weights
    every time), through the same ground-truth evaluation, far below the true object."""
    import pandas as pd

    from db3d.eval.reference import untrained_field, write_reference

    monkeypatch.setattr("db3d.eval.mesh.MESH_RESOLUTION", 24)
    monkeypatch.setattr("db3d.eval.groundtruth.CHAMFER_POINTS", 2000)
    cfg = dict(gt_cfg, seed=1, device="cpu")
    sub = tmp_path / "mug_red"
    build_synthetic_subject("mug_red", "mug", "red", 1, sub, resolutions=(16,), num_photos=2,
                            camera_cfg=cfg["nerf"]["camera"])
    a, b = untrained_field(cfg)[0], untrained_field(cfg)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    other = untrained_field(dict(cfg, seed=2))[0]
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), other.state_dict().values()))
    out = write_reference(cfg, "untrained", sub, "seed~1", tmp_path / "ref")
    df = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert sorted(df.metric) == GT_NAMES and set(df.variant) == {"untrained"} and set(df.model) == {GT_MODEL}
    assert set(df.setting) == {"seed~1"} and set(df.seed) == {1} and set(df.subject) == {"mug_red"}
    values = dict(zip(df.metric, df.value.astype(float)))
    true_values, _, _ = _run(cfg, AnalyticField(sample_object("mug", "red", 1)), sample_object("mug", "red", 1))
    assert values["psnr"] < true_values["psnr"] - 5 and values["lpips"] > true_values["lpips"] + 0.05
    assert json.loads((tmp_path / "ref" / "info.json").read_text())["reference"] == "untrained"
    with pytest.raises(Exception, match="object.json"):
        write_reference(cfg, "untrained", tmp_path, "seed~1", tmp_path / "ref2")
