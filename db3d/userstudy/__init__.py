"""The pairwise user study of DreamBooth3D (Raj et al., ICCV 2023): design, web app, storage, analysis.

Raters compare two rotating videos (turntables) at a time - DreamBooth3D against one baseline on
the same subject and prompt - and answer three questions (subject fidelity, 3D consistency,
prompt fidelity). See docs/userstudy.md.

- `design`: `build_study` writes a study folder (manifest.json fixing the design with its seed,
  media, rater tokens); `rater_schedule` derives a rater's trials from the manifest.
- `store`: the SQLite (WAL) answer store.
- `server`: the Flask app (`create_app`) and `serve` (waitress).
- `analysis`: preference rates, Wilson CIs, binomial tests, majority votes, Fleiss' kappa.
"""
from __future__ import annotations

from .design import QUESTIONS, build_study, load_manifest, rater_schedule  # noqa: F401
