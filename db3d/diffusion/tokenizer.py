"""Tokenizers behind one small interface: `tok(prompts) -> (input_ids [B,L], attention_mask [B,L])`.

- `OpenClipBPE`: open_clip's bundled CLIP BPE (49408 tokens, works offline). It is the vocabulary
  of SD 2.x's OpenCLIP-ViT-H text encoder (SD2 pads with "!" = id 0, as open_clip does), so the
  tiny backend and `models.sd: random` tokenise exactly like the real SD2 tokenizer would.
- `HFTokenizer`: a transformers tokenizer loaded with the real model (CLIPTokenizer, T5Tokenizer).
- `T5StandIn`: for `models.if: random` only. The real T5 sentencepiece model ships with the IF
  weights, which are not here; the stand-in runs the CLIP BPE and folds its ids into T5's range
  (3 + id mod 31997, i.e. avoiding pad=0, eos=1, unk=2 and the 100 sentinel ids >= 32000), then
  appends eos. The ids mean nothing to a real T5, but a random-weight T5 only needs valid ids of
  the right length and padding for a benchmark to cost what the real one costs.

open_clip's `tokenizer.py` is self-contained; it is loaded from its file without importing the
`open_clip` package (which pulls in timm and the model zoo: seconds per process).
"""
from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch


@lru_cache(maxsize=1)
def _open_clip_tokenizer_module() -> ModuleType:
    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.tokenizer"]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is not installed (needed for the CLIP BPE tokenizer)")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("db3d._open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


class OpenClipBPE:
    """CLIP BPE: <start> tokens <end>, zero-padded to `context_length`; mask = 1 up to <end>."""

    vocab_size = 49408

    def __init__(self, context_length: int = 77):
        self.context_length = context_length
        self._tok = _open_clip_tokenizer_module().SimpleTokenizer(context_length=context_length)
        self.eot_token_id = self._tok.eot_token_id

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self._tok(list(prompts), context_length=self.context_length).long()
        mask = torch.zeros_like(ids)
        for i, row in enumerate(ids):
            end = int((row == self.eot_token_id).nonzero()[0]) if (row == self.eot_token_id).any() else len(row) - 1
            mask[i, : end + 1] = 1
        return ids, mask


class HFTokenizer:
    """A transformers tokenizer padded to `max_length` (77 for SD 2.x and IF, as their pipelines do)."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = int(max_length or min(getattr(tokenizer, "model_max_length", 77), 512))

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length,
                             truncation=True, add_special_tokens=True, return_tensors="pt")
        return out.input_ids.long(), out.attention_mask.long()


class T5StandIn:
    """CLIP BPE ids folded into T5's vocabulary range (see module docstring: benchmarks only)."""

    pad_id, eos_id, first_free, n_free = 0, 1, 3, 31997

    def __init__(self, context_length: int = 77):
        self.context_length = context_length
        self._bpe = OpenClipBPE(context_length=context_length + 1)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        bpe_ids, bpe_mask = self._bpe(prompts)
        L = self.context_length
        ids = torch.full((len(prompts), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), L), dtype=torch.long)
        for i in range(len(prompts)):
            body = bpe_ids[i, 1: int(bpe_mask[i].sum()) - 1][: L - 1]  # drop <start>/<end>
            row = torch.cat([self.first_free + body % self.n_free, torch.tensor([self.eos_id])])
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask
