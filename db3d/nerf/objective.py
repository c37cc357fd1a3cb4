"""The NeRF stages' objective: SDS plus weighted terms on one scale, and what each term contributes.

**One scale.** SDS's surrogate (`db3d.guidance`) is a *sum* over the N elements of one model-space
image (VAE latents for `sd`, pixels for `if`/`toy`/`tiny` in pixel space), averaged over the batch:
its gradient per element is w(t) (eps_hat - eps), of order 1. Every other term is a *mean* (per
pixel, per ray) and enters the loss multiplied by the same N:

    loss = SDS_sum + N * sum_k lambda_k(step) * term_k_mean

so a weight lambda reads "lambda times as strong, per element, as SDS": `stage3.recon_weight: 1`
makes the reconstruction's per-pixel gradient 2 (render - pseudo view) of the same order as
SDS's per-element one. (Equivalently: every term is a per-element mean, SDS included; the common
factor N keeps SDS's gradients at their native size, which fp16 backward passes through the VAE
need, and Adam is invariant to it.) Before this scale the reconstruction was a mean against SDS's
sum: N = 3,072 (toy, 32 px) to 16,384 (sd) times weaker than its weight said (docs/losses.md).

**Schedules.** A weight is a number, or `[start, end, ramp]`: linear from `start` at step 0 to
`end` at `ramp` x the stage's iterations, then constant (threestudio's `[0, 10, 1000, 5000]`
orientation ramp of 10,000 steps is `[10/N, 1000/N, 0.5]` in these units).

**Gradient shares.** Every `share_every` steps the stage differentiates each weighted term on its
own (`term_gradients`): the norm of its gradient at the field's and background's parameters, its
dot product with the total gradient (the one Adam is given: the dot products add up to its squared
norm, which checks that no term was left out), and its gradient norm at the rendered image it acts
on (SDS: the random view; reconstruction: the pseudo view's render). The records stay on the device
until the stage's next flush (no host sync per step) and land in `losses.json`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

REGULARISERS = ("orientation", "opacity", "distortion")


def weight_at(spec: float | Sequence[float], step: int, iters: int) -> float:
    """The weight of step `step` (0-based) of an `iters`-step stage: a number, or `[start, end, ramp]`."""
    if isinstance(spec, (int, float)):
        return float(spec)
    start, end, ramp = (float(v) for v in spec)
    span = ramp * max(int(iters), 1)
    frac = 1.0 if span <= 0 else min(max(step / span, 0.0), 1.0)
    return start + (end - start) * frac


def max_weight(spec: float | Sequence[float]) -> float:
    """The largest value a weight takes (0 means the term is off for the whole stage)."""
    return float(spec) if isinstance(spec, (int, float)) else max(float(spec[0]), float(spec[1]))


def weighted_terms(regularisers: Mapping[str, float | Sequence[float]], losses: Mapping[str, Tensor],
                   step: int, iters: int, scale: int) -> dict[str, Tensor]:
    """The regularisers of one render, each `scale * weight(step) * value`, those with weight > 0."""
    out = {}
    for name in REGULARISERS:
        w = weight_at(regularisers[name], step, iters)
        if w > 0 and name in losses:
            out[name] = (scale * w) * losses[name]
    return out


def term_gradients(terms: Mapping[str, Tensor], params: Sequence[Tensor],
                   images: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Differentiate each term on its own, put their sum into the parameters' `.grad` (what
    `sum(terms).backward()` would), and return device scalars: `param/<term>` (norm at the
    parameters), `dot/<term>` (dot product with the total gradient), `image/<term>` (norm at
    `images[term]`, for the terms that have an image), `param/total`.

    Each term's graph is kept until the last one (`retain_graph`): the terms share the render."""
    images = dict(images or {})
    names = list(terms)
    per_term: dict[str, list[Tensor | None]] = {}
    out: dict[str, Tensor] = {}
    for i, name in enumerate(names):
        inputs = list(params) + ([images[name]] if name in images else [])
        grads = torch.autograd.grad(terms[name], inputs, retain_graph=i < len(names) - 1, allow_unused=True)
        if name in images:
            g_img = grads[-1]
            out[f"image/{name}"] = (g_img.float().norm() if g_img is not None
                                    else torch.zeros((), device=terms[name].device))
            grads = grads[:-1]
        per_term[name] = list(grads)
    total: list[Tensor | None] = []
    for j, p in enumerate(params):
        gs = [per_term[n][j] for n in names if per_term[n][j] is not None]
        g = torch.stack(gs).sum(0) if len(gs) > 1 else (gs[0] if gs else None)
        total.append(g)
        p.grad = None if g is None else g.detach().clone()
    flat_total = _flat(total, params)
    for name in names:
        flat = _flat(per_term[name], params)
        out[f"param/{name}"] = flat.norm()
        out[f"dot/{name}"] = flat @ flat_total
    out["param/total"] = flat_total.norm()
    return out


def _flat(grads: Iterable[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).detach().float().reshape(-1)
                      for g, p in zip(grads, params)])


def nest_shares(record: dict) -> None:
    """Move a flushed record's flat `param/...`, `dot/...`, `image/...` numbers into
    `record["grad"] = {"param": {...}, "dot": {...}, "image": {...}}` and add `share`: each term's
    parameter-gradient norm over the sum of all terms' (the report's share; sums to 1)."""
    flat = {k: record.pop(k) for k in [k for k in record if k.split("/", 1)[0] in ("param", "dot", "image")]}
    if not flat:
        return
    grad: dict[str, dict[str, float]] = {"param": {}, "dot": {}, "image": {}}
    for key, value in flat.items():
        kind, name = key.split("/", 1)
        grad[kind][name] = value
    norms = {k: v for k, v in grad["param"].items() if k != "total"}
    denom = sum(norms.values())
    grad["share"] = {k: (v / denom if denom > 0 else 0.0) for k, v in norms.items()}
    record["grad"] = grad


__all__ = ["REGULARISERS", "max_weight", "nest_shares", "term_gradients", "weight_at", "weighted_terms"]
