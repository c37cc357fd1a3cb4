"""Directly captured CUDA graphs (`db3d.diffusion.graphs.CUDAGraphed`, `compile_unet`'s default).

CPU: the wrapper's logic (which calls replay, which fall back to eager, keys, copy-in/copy-out,
invalidation, failed captures) with the CUDA pieces replaced by a stand-in graph that recomputes into
the static outputs on replay; the backend's wiring. GPU (`gpu` marker): real captures against eager,
on the tiny backend in fp16 and fp32, weights changed in place and given new storage, SDS losses.
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

from db3d.diffusion import build_backend
from db3d.diffusion.compiling import cudagraph_mode
from db3d.diffusion.graphs import CUDAGraphed


class Net(nn.Module):
    """A small module with the UNet's call shape: (x, t, encoder_hidden_states=c) -> out.sample."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x, t, encoder_hidden_states=None, scale: float = 1.0):
        self.calls += 1
        y = self.lin(x) * scale + t.float().view(-1, 1)
        if encoder_hidden_states is not None:
            y = y + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1)
        return {"sample": y, "tag": "out"}


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph: a replay recomputes the call on the static inputs and
    writes the static outputs in place, as a replay overwrites its graph's output memory."""

    def __init__(self, fn, outputs):
        self.fn, self.outputs, self.replays, self.dead = fn, outputs, 0, False

    def replay(self):
        assert not self.dead
        fresh = [x for x in pytree.tree_flatten(self.fn())[0] if isinstance(x, torch.Tensor)]
        for static, new in zip(self.outputs, fresh):
            static.copy_(new)
        self.replays += 1

    def reset(self):
        self.dead = True


class CPUGraphed(CUDAGraphed):
    """The wrapper's logic on CPU tensors (the capture itself replaced by `_FakeGraph`)."""

    device_type = "cpu"
    fail_next = False

    @staticmethod
    def _capturing() -> bool:
        return False

    def _record(self, static_args, static_kwargs, autocast, dtype):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("operation not permitted when stream is capturing")
        out = self._static_call(static_args, static_kwargs)
        outputs = [x for x in pytree.tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
        return _FakeGraph(lambda: self._static_call(static_args, static_kwargs), outputs), out


def inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, 3, 8, generator=g))


def test_replays_after_one_eager_call_and_matches_eager():
    net = Net()
    w = CPUGraphed(net)
    x, t, c = inputs()
    with torch.no_grad():
        want = net(x, t, encoder_hidden_states=c)["sample"]
        first = w(x, t, encoder_hidden_states=c)  # first call of a signature: eager
        assert w.counts == {"replay": 0, "eager": 1, "capture": 0, "invalidate": 0} and not w.graphs
        second = w(x, t, encoder_hidden_states=c)  # captured, then replayed
        third = w(x, t, encoder_hidden_states=c)
    assert w.counts["capture"] == 1 and w.counts["replay"] == 2 and len(w.graphs) == 1 and len(w.capture_s) == 1
    for out in (first, second, third):
        torch.testing.assert_close(out["sample"], want)
        assert out["tag"] == "out"  # non-tensor parts of the output come back as they were
    assert "1 graph(s) captured" in w.describe()


def test_copy_in_copy_out():
    """Each call copies its inputs into the static buffers and returns copies of the outputs: a
    later replay does not change what an earlier call returned, and the caller's tensors are not
    the graph's."""
    net = Net()
    w = CPUGraphed(net, eager_calls=0)
    (x1, t, c), (x2, _, _) = inputs(seed=1), inputs(seed=2)
    with torch.no_grad():
        a = w(x1, t, encoder_hidden_states=c)["sample"]
        a_copy = a.clone()
        b = w(x2, t, encoder_hidden_states=c)["sample"]
        want_b = net(x2, t, encoder_hidden_states=c)["sample"]
    g = next(iter(w.graphs.values()))
    assert g.graph.replays == 2 and w.counts["eager"] == 0
    torch.testing.assert_close(a, a_copy)  # untouched by the second replay
    torch.testing.assert_close(b, want_b)
    assert all(a.data_ptr() != o.data_ptr() for o in g.outputs)
    assert all(x1.data_ptr() != i.data_ptr() for i in g.inputs)
    # an expanded (stride-0) input is copied into a contiguous static buffer
    with torch.no_grad():
        ce = c[:1].expand(2, -1, -1)
        torch.testing.assert_close(w(x2, t, encoder_hidden_states=ce)["sample"],
                                   net(x2, t, encoder_hidden_states=ce)["sample"])


def test_keys_shapes_dtypes_arguments_and_kernel_state():
    net = Net()
    w = CPUGraphed(net, eager_calls=0, max_graphs=3)
    x, t, c = inputs()
    with torch.no_grad():
        w(x, t, encoder_hidden_states=c)
        w(x, t, encoder_hidden_states=c)
        assert len(w.graphs) == 1
        x4, t4, c4 = inputs(batch=4)
        w(x4, t4, encoder_hidden_states=c4)  # another batch: its own graph
        w(x, t, encoder_hidden_states=c, scale=2.0)  # another non-tensor argument value: its own graph
        assert len(w.graphs) == 3
        assert w.signature((x, t), {"encoder_hidden_states": c}) != w.signature((x4, t4), {"encoder_hidden_states": c4})
        prev = torch.are_deterministic_algorithms_enabled()
        try:
            torch.use_deterministic_algorithms(not prev, warn_only=True)  # kernel choice: part of the key
            k2 = w.signature((x, t), {"encoder_hidden_states": c})
        finally:
            torch.use_deterministic_algorithms(prev)
        assert k2 != w.signature((x, t), {"encoder_hidden_states": c})
        # over max_graphs: eager, still right
        eager_before = w.counts["eager"]
        x8, t8, c8 = inputs(batch=8)
        out = w(x8, t8, encoder_hidden_states=c8)["sample"]
        assert len(w.graphs) == 3 and w.counts["eager"] == eager_before + 1
        torch.testing.assert_close(out, net(x8, t8, encoder_hidden_states=c8)["sample"])
        # an argument that cannot be keyed (a list): eager
        assert w.signature((x, [t]), {}) is None
        assert w.signature((x, t), {"encoder_hidden_states": c, "extra": {"a": 1}}) is None


def test_eager_fallbacks():
    net = Net()
    w = CPUGraphed(net, eager_calls=0)
    x, t, c = inputs()
    out = w(x, t, encoder_hidden_states=c)  # autograd on: eager, with a graph to back-propagate through
    out["sample"].sum().backward()
    assert net.lin.weight.grad is not None and w.why_eager((x, t), {}) == "autograd"
    assert not w.graphs and w.counts["eager"] == 1
    real = CUDAGraphed(net)  # the real wrapper on CPU tensors: eager, never a capture
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(real(x, t, encoder_hidden_states=c)["sample"],
                                       net(x, t, encoder_hidden_states=c)["sample"])
        assert real.why_eager((x, t), {"encoder_hidden_states": c}) == "not cuda"
    assert real.counts == {"replay": 0, "eager": 3, "capture": 0, "invalidate": 0}
    with torch.no_grad():  # no tensor at all: eager
        assert w.why_eager((), {}) == "not cpu"


def test_failed_capture_runs_eagerly_from_then_on(caplog):
    net = Net()
    w = CPUGraphed(net, eager_calls=0)
    w.fail_next = True
    x, t, c = inputs()
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        a = w(x, t, encoder_hidden_states=c)["sample"]
        b = w(x, t, encoder_hidden_states=c)["sample"]
    assert "capture failed" in caplog.text and not w.graphs and len(w.failed) == 1
    assert w.counts["eager"] == 2 and w.counts["capture"] == 0
    torch.testing.assert_close(a, b)


def test_invalidation_on_new_weight_storage_and_on_request():
    net = Net()
    w = CPUGraphed(net, eager_calls=0)
    x, t, c = inputs()
    with torch.no_grad():
        w(x, t, encoder_hidden_states=c)
        old = next(iter(w.graphs.values()))
        net.lin.weight.data = net.lin.weight.data * 2.0  # new storage (as a dtype cast or .to() gives)
        out = w(x, t, encoder_hidden_states=c)["sample"]
        torch.testing.assert_close(out, net(x, t, encoder_hidden_states=c)["sample"])
        assert old.graph.dead and w.counts["invalidate"] == 1 and w.counts["capture"] == 2
        net.lin.weight.mul_(0.5)  # in place: same storage, the graph stays (a replay reads it)
        w(x, t, encoder_hidden_states=c)
        assert w.counts["invalidate"] == 1
        w.invalidate()  # what the backend calls when LoRA adapters are added, etc.
        assert not w.graphs and w.counts["invalidate"] == 2


def test_cudagraph_mode_values():
    assert [cudagraph_mode(v) for v in (False, None, "", "0", "off")] == [""] * 5
    assert [cudagraph_mode(v) for v in (True, "1", "direct")] == ["direct"] * 3
    assert [cudagraph_mode(v) for v in ("compile", "reduce-overhead")] == ["compile"] * 2
    with pytest.raises(ValueError):
        cudagraph_mode("sometimes")


def _tiny(cfg: dict, device: str = "cpu", precision: str | None = None):
    cfg = dict(cfg, backend="tiny", models=dict(cfg["models"], tiny_space="latent"))
    if precision:
        cfg["precision"] = precision
    return build_backend(cfg, device=device)


def test_backend_wiring_on_cpu(tiny_cfg):
    """On CPU `cudagraphs="direct"` sets up nothing (and says so); with a graphed UNet in place the
    backend routes only calls without autograd through it, skips its own output copy, and drops its
    graphs when fine-tuning changes the weights' storage or structure."""
    b = _tiny(tiny_cfg)
    notes = b.compile_models(None, cudagraphs="direct")
    assert "unet_graphed" not in b._compiled and any("no CUDA graphs on cpu" in n for n in notes)
    assert b.graph_stats() is None
    x = torch.randn(1, b.model_channels, b.latent_size, b.latent_size)
    cond, uncond = b.encode_text(["a sks dog"]), b.encode_text([""])
    with torch.no_grad():
        want = b.predict_noise(x, 500, cond, uncond, 7.5)
    w = CPUGraphed(b.unet, eager_calls=0)
    b._compiled["unet_graphed"] = w
    with torch.no_grad():
        got = [b.predict_noise(x, 500, cond, uncond, 7.5) for _ in range(2)]
    for g in got:
        torch.testing.assert_close(g, want)
    assert w.counts["replay"] == 2 and "1 graph(s)" in b.graph_stats()
    b.training_loss(torch.rand(1, 3, 64, 64), ["a sks dog"]).sum()  # autograd: the eager UNet
    assert w.counts["replay"] == 2 and w.counts["eager"] == 0
    b.trainable_parameters(lora_rank=0)  # fp32 master weights (no-op here: fp32 already) -> graphs dropped
    assert not w.graphs
    with torch.no_grad():
        b.predict_noise(x, 500, cond, uncond, 7.5)
    b.freeze()
    assert not w.graphs
    b.uncompile_models()
    assert not b._compiled


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_gpu_graphed_unet_matches_eager(tiny_cfg, precision):
    """Real captures on CUDA: the graphed UNet + CFG call equals the eager one (the same kernels
    replayed), for two batch sizes (two graphs), after an in-place weight change (seen by the
    replay) and after new weight storage (graphs re-captured); SDS losses agree to 1e-3."""
    from db3d.guidance import ScoreDistillation

    b = _tiny(tiny_cfg, "cuda", precision)
    cond, uncond = b.encode_text(["a sks dog"]), b.encode_text([""])
    xs = {n: torch.randn(n, b.model_channels, b.latent_size, b.latent_size, device="cuda",
                         generator=torch.Generator("cuda").manual_seed(n)) for n in (1, 4)}

    def calls():
        with torch.no_grad():
            return {n: b.predict_noise(x, 500, cond, uncond, 7.5) for n, x in xs.items()}

    def sds_losses():
        sds = ScoreDistillation(b, tiny_cfg["sds"], total_iters=100)
        out = []
        for step in range(4):
            render = torch.rand(1, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(step),
                                requires_grad=True)
            loss, _ = sds(render, cond, uncond, step=step, generator=torch.Generator().manual_seed(step))
            out.append(loss.detach().item())
        return out

    want, want_sds = calls(), sds_losses()
    b.compile_models(None, cudagraphs="direct")
    w = b._compiled["unet_graphed"]
    got = [calls() for _ in range(3)]  # eager, capture + replay, replay
    assert w.counts["capture"] == 2 and w.counts["replay"] == 4, w.describe()
    tol = dict(rtol=1e-3, atol=1e-3) if precision == "fp16" else dict(rtol=1e-5, atol=1e-5)
    for g in got:
        for n in xs:
            torch.testing.assert_close(g[n], want[n], **tol)
    assert sds_losses() == pytest.approx(want_sds, rel=1e-3, abs=1e-6)
    # weights changed in place: the replay reads them
    p = next(p for p in b.unet.parameters() if p.ndim == 4)
    with torch.no_grad():
        p.mul_(1.5)
    captures = w.counts["capture"]
    graphed = calls()
    b.uncompile_models()
    eager = calls()
    for n in xs:
        torch.testing.assert_close(graphed[n], eager[n], **tol)
    assert w.counts["capture"] == captures
    # new storage (as freeze() casts): dropped and re-captured, still equal to eager
    b.compile_models(None, cudagraphs="direct")
    w = b._compiled["unet_graphed"]
    calls(), calls()
    p.data = p.data.clone()
    again = calls()
    assert w.counts["invalidate"] == 1
    for n in xs:
        torch.testing.assert_close(again[n], eager[n], **tol)
    assert torch.isfinite(torch.stack([again[n].abs().sum() for n in xs])).all()
