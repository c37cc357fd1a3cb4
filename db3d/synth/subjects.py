"""A synthetic subject from its row of the subject table (`python -m db3d synthetic-subject`).

The table (config/synthetic/subjects.tsv) is the DreamBooth subject table plus two columns that
pin the object down: `colour` (a name in `db3d.synth.world.COLOURS`) and `instance_seed` (the
shape parameters). Subjects therefore have stable names and are rebuilt identically anywhere,
so their folders (data/synthetic/) need no DVC versioning.
"""
from __future__ import annotations

from pathlib import Path

from ..data.prompts import subject_row
from ..errors import DataError

# 32: the toy prior's resolution (DreamBooth, SDS); 64, 128: evaluation and the report's photos.
RESOLUTIONS = (32, 64, 128)
EXTRA_COLUMNS = ("colour", "instance_seed")


def build_from_table(cfg: dict, subject: str, out_dir: Path) -> None:
    from .world import build_synthetic_subject

    table = cfg["dataset"]["subjects_table"]
    row = subject_row(table, subject)
    missing = [c for c in EXTRA_COLUMNS if not str(row.get(c, "")).strip()]
    if missing:
        raise DataError(f"{table}: subject {subject!r} has no {', '.join(missing)}; a synthetic subject needs "
                        "the columns colour and instance_seed (see config/synthetic/subjects.tsv)")
    try:
        seed = int(row["instance_seed"])
    except ValueError:
        raise DataError(f"{table}: subject {subject!r}: instance_seed {row['instance_seed']!r} is not an integer") from None
    build_synthetic_subject(subject, row["class_noun"], row["colour"], seed, Path(out_dir),
                            resolutions=RESOLUTIONS, num_photos=int(cfg["dataset"]["num_photos"]),
                            camera_cfg=cfg["nerf"]["camera"], token=row["token"])
