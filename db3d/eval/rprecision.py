"""CLIP R-Precision: does CLIP retrieve the right prompt from a rendered view?

Protocol (DreamFields, Jain et al. 2022; DreamFusion, Poole et al. 2022; used by DreamBooth3D's
Table 1): every rendered view of an asset is a query; the candidates are the text embeddings of a
*retrieval pool* of prompts; a view counts as a hit at k when its true prompt is among the k
highest cosine similarities. R@k is the fraction of views that hit.

Retrieval pool used by db3d (`retrieval_pool`): every prompt of the `eval3d` set in
`config/prompts.tsv`, for all subjects, each rendered with its subject's class noun and WITHOUT
the rare token (`a sks dog sleeping` -> `a dog sleeping`), since CLIP has never seen `sks` and the
token would only add noise. Identical strings (two subjects of the same class sharing a template)
are merged into one candidate, and the evaluated prompt is added if it is not in the pool (e.g. a
`recontext` prompt). The pool is an argument of `r_precision` (a list of text embeddings), so
other pools can be passed.

Ties are broken pessimistically: a candidate that scores exactly as high as the true prompt
counts as ranked above it (an all-equal score matrix gives R@1 = 0, not 1/P).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch


def r_precision(image_emb: torch.Tensor, text_emb: torch.Tensor, true_index: Sequence[int], k: int = 1) -> float:
    """Fraction of views whose true prompt ranks in the top `k` of the pool.

    image_emb: [N,D] view embeddings; text_emb: [P,D] pool embeddings (both are L2-normalised
    here, so unnormalised inputs are fine); true_index: N indices into the pool (one per view;
    a single-element list is broadcast to all views).
    """
    image_emb = torch.as_tensor(image_emb, dtype=torch.float64)
    text_emb = torch.as_tensor(text_emb, dtype=torch.float64)
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"r_precision: expected [N,D] and [P,D], got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    n, p = image_emb.shape[0], text_emb.shape[0]
    if n == 0:
        raise ValueError("r_precision: no views")
    idx = torch.as_tensor(list(true_index), dtype=torch.long)
    if idx.numel() == 1 and n > 1:
        idx = idx.expand(n)
    if idx.numel() != n:
        raise ValueError(f"r_precision: {idx.numel()} true indices for {n} views")
    if (idx < 0).any() or (idx >= p).any():
        raise ValueError(f"r_precision: true index out of range for a pool of {p} prompts")
    if k < 1:
        raise ValueError("r_precision: k must be >= 1")
    sims = torch.nn.functional.normalize(image_emb, dim=-1) @ torch.nn.functional.normalize(text_emb, dim=-1).T
    true = sims.gather(1, idx[:, None])  # [N,1]
    # rank = number of *other* candidates scoring >= the true one (pessimistic ties)
    others_at_least = (sims >= true).sum(dim=1) - 1
    hits = others_at_least < k
    return float(hits.double().mean())


def clip_t(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """CLIP-T: mean cosine similarity between the views [N,D] and one prompt [D] or [1,D]."""
    image_emb = torch.nn.functional.normalize(torch.as_tensor(image_emb, dtype=torch.float64), dim=-1)
    text_emb = torch.nn.functional.normalize(torch.as_tensor(text_emb, dtype=torch.float64).reshape(1, -1), dim=-1)
    return float((image_emb @ text_emb.T).mean())


def render_without_token(template: str, class_noun: str) -> str:
    """`a {token} {class_noun} sleeping` -> `a dog sleeping` (whitespace collapsed)."""
    text = template.replace("{token}", "").replace("{class_noun}", class_noun)
    return re.sub(r"\s+", " ", text).strip()


def strip_token(text: str, token: str) -> str:
    """Remove the rare token from an already-rendered prompt (`a sks dog` -> `a dog`)."""
    if not token:
        return re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+", " ", re.sub(rf"(?<!\w){re.escape(token)}(?!\w)", "", text)).strip()


def retrieval_pool(prompts, subjects, prompt_set: str = "eval3d") -> list[str]:
    """The default pool: all `prompt_set` prompts of all subjects, class noun in, token out.

    `prompts`/`subjects` are the DataFrames of `db3d.data.prompts.load_prompts/load_subjects`
    (columns subject, prompt_id, prompt, set / subject, class_noun, ...). Order: the table's
    order, first occurrence kept, so the pool is the same on every run.
    """
    nouns = dict(zip(subjects["subject"], subjects["class_noun"]))
    rows = prompts[prompts["set"] == prompt_set] if "set" in prompts.columns else prompts
    texts = []
    for subject, template in zip(rows["subject"], rows["prompt"]):
        if subject not in nouns:
            continue
        texts.append(render_without_token(str(template), str(nouns[subject])))
    return dedupe(texts)


def dedupe(texts: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for t in texts:
        seen.setdefault(t, None)
    return list(seen)


def pool_with(pool: list[str], text: str) -> tuple[list[str], int]:
    """(pool, index of `text`), appending `text` when it is not already a candidate."""
    pool = list(pool)
    if text not in pool:
        pool.append(text)
    return pool, pool.index(text)
