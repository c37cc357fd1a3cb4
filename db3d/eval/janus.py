"""Janus score: does the back of the object look like its front (the multi-face "Janus" failure)?

Definition (docs/evaluation.md). The fixed evaluation orbit renders N views at azimuths
a_i = 360 i / N (one elevation; azimuth 0 is the front, the side DreamFusion's view-dependent
prompts call "front"). Each view is embedded (DINO or CLIP image, L2-normalised: e_i). With
DreamFusion's azimuth buckets (`db3d.nerf.view_direction`, wrapped |a| in [0, 180]):

    reference  r = e_0, the view at azimuth 0 (the frontmost view; |a| <= 45 required)
    back       B = { i : |a_i| >= 135 }
    side       S = { i : 45 < |a_i| < 135 }

    janus = mean_{i in B} cos(e_i, r) - mean_{i in S} cos(e_i, r)

It rises when the back views resemble the front more than the side views do: a two-faced object
(the same face front and back) gives a back similarity close to 1 and a large positive score; a
consistent object, whose back differs from its front, gives a lower (typically negative) one; a
featureless or rotationally symmetric object gives ~0. Subtracting the side similarity removes the
embedder's baseline similarity between any two renders of one object (high for DINO and CLIP on a
shared background), so the score is comparable across variants *for one embedder*; it is
reported per embedder (the `model` column). It needs at least one back and one side view
(num_views >= 3 with views on both sides of 45..135, e.g. 4 or 8); otherwise it is NaN.

`reference` may be given instead of the front render, e.g. the mean embedding of the subject's
photos (the subject as photographed, mostly from the front); `evaluate` uses the front render.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

FRONT_MAX_DEG = 45.0
BACK_MIN_DEG = 135.0


@dataclass
class JanusScore:
    value: float                      # back_sim - side_sim (NaN when undefined)
    back_sim: float
    side_sim: float
    reference_azimuth: float | None   # None when an external reference was given
    back_azimuths: list[float] = field(default_factory=list)
    side_azimuths: list[float] = field(default_factory=list)
    reason: str = ""                  # why the score is NaN ("" when defined)

    def as_dict(self) -> dict:
        """JSON-ready (NaN -> None)."""
        def num(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {"janus": num(self.value), "back_sim": num(self.back_sim), "side_sim": num(self.side_sim),
                "reference_azimuth": self.reference_azimuth, "back_azimuths": self.back_azimuths,
                "side_azimuths": self.side_azimuths, "reason": self.reason}


def wrapped_abs(azimuth_deg: float) -> float:
    """|azimuth| after wrapping to [-180, 180): 0 front, 90 side, 180 back."""
    return abs((float(azimuth_deg) + 180.0) % 360.0 - 180.0)


def janus_score(view_emb: torch.Tensor, azimuth_deg: Sequence[float],
                reference: torch.Tensor | None = None) -> JanusScore:
    """The Janus score of views [N,D] at `azimuth_deg` (N values); see the module docstring.

    `reference`: None (the view closest to azimuth 0), or embeddings [D] / [M,D] whose normalised
    mean is the front reference.
    """
    emb = torch.nn.functional.normalize(torch.as_tensor(view_emb, dtype=torch.float64), dim=-1)
    az = [float(a) for a in azimuth_deg]
    if emb.ndim != 2 or emb.shape[0] != len(az):
        raise ValueError(f"janus_score: {len(az)} azimuths for embeddings of shape {tuple(emb.shape)}")
    absaz = [wrapped_abs(a) for a in az]
    back = [i for i, a in enumerate(absaz) if a >= BACK_MIN_DEG]
    side = [i for i, a in enumerate(absaz) if FRONT_MAX_DEG < a < BACK_MIN_DEG]
    ref_az: float | None = None
    nan = float("nan")
    if reference is None:
        front = min(range(len(az)), key=lambda i: absaz[i]) if az else None
        if front is None or absaz[front] > FRONT_MAX_DEG:
            return JanusScore(nan, nan, nan, None, [az[i] for i in back], [az[i] for i in side],
                              reason=f"no front view (|azimuth| <= {FRONT_MAX_DEG:g})")
        ref = emb[front]
        ref_az = az[front]
    else:
        ref = torch.as_tensor(reference, dtype=torch.float64).reshape(-1, emb.shape[1])
        ref = torch.nn.functional.normalize(torch.nn.functional.normalize(ref, dim=-1).mean(0), dim=0)
    sims = emb @ ref
    back_sim = float(sims[back].mean()) if back else nan
    side_sim = float(sims[side].mean()) if side else nan
    reason = "" if back and side else (
        f"needs back (|azimuth| >= {BACK_MIN_DEG:g}) and side ({FRONT_MAX_DEG:g} < |azimuth| < "
        f"{BACK_MIN_DEG:g}) views; got {len(back)} back, {len(side)} side")
    value = back_sim - side_sim if not reason else nan
    if not reason and math.isnan(value):
        reason = "non-finite embeddings"
    return JanusScore(value, back_sim, side_sim, ref_az, [az[i] for i in back], [az[i] for i in side], reason)
