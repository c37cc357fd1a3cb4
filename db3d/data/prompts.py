"""Subject and prompt tables: parsed once from the dataset's text files, then committed.

The dataset ships its classes and prompts as a half-Python text file (`prompts_and_classes.txt`)
and its credits as prose (`references_and_licenses.txt`). Parsing them on every workflow run would
make the stage graph depend on that format, so `write_tables` turns them into two TSVs under
`config/` that are reviewed and committed; everything downstream reads only the TSVs.

`config/subjects.tsv`: subject, class_noun, kind (live|object), token, licence.
`config/prompts.tsv`: subject, prompt_id, prompt (template with `{token}` and `{class_noun}`),
set (eval3d|recontext), origin (dataset|db3d).

Row order matters: per subject the `eval3d` rows come first, the plain `a {token} {class_noun}`
first of all, because the workflow evaluates the first `dataset.prompts_per_subject` rows.
A template that is both an eval3d prompt and one of the dataset's 25 prompts (e.g. "a red ...")
appears once, with set=eval3d and origin=dataset: the dataset's recontextualisation benchmark is
`origin == "dataset"` (25 rows per subject), the 3D evaluation set is `set == "eval3d"`.
"""
from __future__ import annotations

import csv
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io import atomic_path
from .source import resolve_source

log = logging.getLogger(__name__)

TOKEN = "sks"  # the rare token of the DreamBooth paper and of diffusers' examples
# The dataset file separates object and live-subject prompts but never says which subjects are
# live; in DreamBooth (and DreamBooth3D) the live subjects are the dogs and cats.
LIVE_CLASSES = frozenset({"dog", "cat"})

SUBJECT_COLUMNS = ["subject", "class_noun", "kind", "token", "licence"]
PROMPT_COLUMNS = ["subject", "prompt_id", "prompt", "set", "origin"]

PLAIN = "a {token} {class_noun}"
# The 3D evaluation prompts, after the kinds DreamBooth3D shows: the plain subject, a colour change,
# poses for live subjects, a support surface for objects. (prompt_id, template), plain first.
EVAL3D = {
    "live": [
        ("plain", PLAIN),
        ("sleeping", "a {token} {class_noun} sleeping"),
        ("sitting", "a {token} {class_noun} sitting"),
        ("jumping", "a {token} {class_noun} jumping"),
        ("red", "a red {token} {class_noun}"),
    ],
    "object": [
        ("plain", PLAIN),
        ("red", "a red {token} {class_noun}"),
        ("purple", "a purple {token} {class_noun}"),
        ("wooden_floor", "a {token} {class_noun} on top of a wooden floor"),
    ],
}

# Words dropped when a prompt_id is made from a template ("... with a city in the background" -> city).
_SLUG_STOPWORDS = frozenset(
    "a an the in on of top with background and it around".split())
_LITERAL = re.compile(r"""^\s*'([^']*)'\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)""")


@dataclass(frozen=True)
class Prompt:
    """One prompt of one subject, filled in, with the class prompt prior preservation uses."""

    subject: str
    prompt_id: str
    text: str          # e.g. "a sks dog sleeping"
    class_prompt: str  # e.g. "a dog"
    class_noun: str
    token: str
    template: str      # e.g. "a {token} {class_noun} sleeping"
    set: str = ""      # eval3d | recontext

    @property
    def generic_text(self) -> str:
        """The prompt without the subject's token ("a dog sleeping"): for a model that never saw it."""
        return " ".join(self.template.format(token="", class_noun=self.class_noun).split())


# ---- parsing the dataset's text files ----------------------------------------------------------

def parse_classes_and_prompts(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Return ({subject: class_noun}, {"object": [templates], "live": [templates]}).

    Templates come back in the project's placeholder form (`{token}`, `{class_noun}`), in file order.
    """
    classes: dict[str, str] = {}
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        lowered = line.lower()
        if lowered == "classes":
            section = "classes"
        elif lowered == "object prompts":
            section = "object"
        elif lowered == "live subject prompts":
            section = "live"
        elif section == "classes" and "," in line and line != "subject_name,class":
            name, noun = (part.strip() for part in line.split(",", 1))
            classes[name] = noun
        elif section in prompts and (m := _LITERAL.match(line)):
            prompts[section].append(m.group(1).replace("{0}", "{token}").replace("{1}", "{class_noun}"))
    if not classes or not prompts["object"] or not prompts["live"]:
        raise DataError("prompts_and_classes.txt: found no 'Classes' / 'Object Prompts' / 'Live Subject "
                        "Prompts' sections; is --source the dataset folder of google/dreambooth?")
    return classes, prompts


def parse_licences(text: str, subjects: list[str]) -> dict[str, str]:
    """Each subject's credit block of references_and_licenses.txt, condensed to one line.

    A block starts at a line `<subject>:` (only known subject names count, so `00: https://...`
    lines stay inside their block) and ends at the next subject or at the `Licenses` heading.
    The licence named is Unsplash's where the block cites unsplash.com, else the dataset's own
    (CC BY 4.0, LICENSE.md: photos by the authors or given to them with all permissions).
    """
    known = set(subjects)
    blocks: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = " ".join(raw.split())
        head = re.match(r"^([A-Za-z0-9_]+)\s*:\s*(.*)$", line)
        if head and head.group(1) in known:
            current = head.group(1)
            blocks[current] = [head.group(2)] if head.group(2) else []
        elif line.lower() == "licenses":
            current = None
        elif current and line:
            blocks[current].append(line)
    return {name: _condense(parts) for name, parts in blocks.items() if parts}


def _condense(parts: list[str]) -> str:
    body = " | ".join(p.replace("\t", " ") for p in parts)
    if "unsplash.com" in body:
        return f"Unsplash License (https://unsplash.com/license); {body}"
    return f"CC BY 4.0 (google/dreambooth LICENSE.md); {body}"


def prompt_slug(template: str) -> str:
    """A short id from a template: `a {token} {class_noun} on top of pink fabric` -> `pink_fabric`."""
    words = re.sub(r"\{token\}|\{class_noun\}", " ", template).lower()
    kept = [w for w in re.findall(r"[a-z0-9]+", words) if w not in _SLUG_STOPWORDS]
    return "_".join(kept) or "plain"


# ---- building the tables ------------------------------------------------------------------------

def subject_rows(classes: dict[str, str], licences: dict[str, str]) -> list[dict[str, str]]:
    """One row per subject; a subject without a credit line is an error (it cannot be published)."""
    rows = []
    for name, noun in classes.items():
        if name not in licences:
            raise DataError(f"references_and_licenses.txt has no line for subject {name!r}; add its "
                            "credit/licence there (or drop the subject from prompts_and_classes.txt)")
        kind = "live" if noun in LIVE_CLASSES else "object"
        rows.append({"subject": name, "class_noun": noun, "kind": kind, "token": TOKEN,
                     "licence": licences[name]})
    return rows


def prompt_rows(subject: str, kind: str, dataset_templates: list[str]) -> list[dict[str, str]]:
    """The subject's prompts: eval3d first (plain first), then the dataset's remaining ones."""
    in_file = set(dataset_templates)
    rows, seen_ids, seen_templates = [], set(), set()
    for prompt_id, template in EVAL3D[kind]:
        origin = "dataset" if template in in_file else "db3d"
        rows.append({"subject": subject, "prompt_id": prompt_id, "prompt": template,
                     "set": "eval3d", "origin": origin})
        seen_ids.add(prompt_id)
        seen_templates.add(template)
    for template in dataset_templates:
        if template in seen_templates:
            continue
        prompt_id = prompt_slug(template)
        if prompt_id in seen_ids:
            raise DataError(f"prompt id {prompt_id!r} of {template!r} is not unique for {subject}; "
                            "extend _SLUG_STOPWORDS or EVAL3D in db3d/data/prompts.py")
        rows.append({"subject": subject, "prompt_id": prompt_id, "prompt": template,
                     "set": "recontext", "origin": "dataset"})
        seen_ids.add(prompt_id)
        seen_templates.add(template)
    return rows


def write_tables(source: Path, subjects_out: Path, prompts_out: Path) -> None:
    """Parse the dataset's text files into `subjects_out` and `prompts_out` (TSV, atomic writes)."""
    root = resolve_source(source)
    classes_file = root / "prompts_and_classes.txt"
    refs_file = root / "references_and_licenses.txt"
    for f in (classes_file, refs_file):
        if not f.is_file():
            raise DataError(f"{f} not found; --source must be the google/dreambooth dataset folder")
    classes, templates = parse_classes_and_prompts(classes_file.read_text(encoding="utf-8"))
    licences = parse_licences(refs_file.read_text(encoding="utf-8"), list(classes))
    subjects = subject_rows(classes, licences)
    prompts = [row for s in subjects for row in prompt_rows(s["subject"], s["kind"], templates[s["kind"]])]
    _write_tsv(Path(subjects_out), SUBJECT_COLUMNS, subjects)
    _write_tsv(Path(prompts_out), PROMPT_COLUMNS, prompts)
    log.info("wrote %s (%d subjects) and %s (%d prompts)", subjects_out, len(subjects), prompts_out, len(prompts))


def _write_tsv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


# ---- reading the tables back --------------------------------------------------------------------

def _read_table(path: str | Path, columns: list[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found; write it with `python -m db3d prompts --source <dataset>`")
    # Snakemake's input functions ask for these tables once per job while it plans the DAG
    # (~600 reads for the paper config): parse each file version once, hand out copies.
    stat = path.stat()
    table = _parse_tsv(str(path.resolve()), stat.st_mtime_ns, stat.st_size).copy()
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; regenerate it with "
                        "`python -m db3d prompts --source <dataset>`")
    return table


@functools.lru_cache(maxsize=8)
def _parse_tsv(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def load_subjects(path: str | Path) -> pd.DataFrame:
    """The subject table (all columns str), in file order."""
    return _read_table(path, SUBJECT_COLUMNS)


def load_prompts(path: str | Path) -> pd.DataFrame:
    """The prompt table (all columns str), in file order: per subject eval3d rows first."""
    table = _read_table(path, PROMPT_COLUMNS)
    dup = table.duplicated(["subject", "prompt_id"])
    if dup.any():
        row = table[dup].iloc[0]
        raise DataError(f"{path}: prompt_id {row['prompt_id']!r} appears twice for {row['subject']}; "
                        "prompt ids must be unique per subject")
    return table


def subject_row(subjects_path: str | Path, subject: str) -> dict[str, str]:
    table = load_subjects(subjects_path)
    row = table[table["subject"] == subject]
    if row.empty:
        raise DataError(f"subject {subject!r} is not in {subjects_path} (unknown class); add a row "
                        "(subject, class_noun, kind, token, licence) or regenerate it with `python -m db3d prompts`")
    return row.iloc[0].to_dict()


def subject_prompt_ids(prompts_path: str | Path, subject: str, n: int) -> list[str]:
    """The first `n` prompt ids of `subject`: the prompts the workflow runs for it."""
    table = load_prompts(prompts_path)
    ids = list(table.loc[table["subject"] == subject, "prompt_id"])
    if not ids:
        raise DataError(f"subject {subject!r} has no prompts in {prompts_path}; regenerate it with "
                        "`python -m db3d prompts` or fix dataset.subjects")
    if not 1 <= n <= len(ids):
        raise DataError(f"dataset.prompts_per_subject={n} but {subject} has {len(ids)} prompts in "
                        f"{prompts_path}; use a value from 1 to {len(ids)}")
    return ids[:n]


def prompt_id_pattern(prompts_path: str | Path, default: str = r"[A-Za-z0-9_]+") -> str:
    """The Snakefile's `prompt_id` wildcard constraint: the ids of the prompt table, so a target
    naming an unknown prompt is refused while Snakemake plans ("No rule to produce ..."), before
    any upstream job runs. `default` when the table does not load (its own error comes later)."""
    try:
        ids = sorted(set(load_prompts(prompts_path)["prompt_id"]))
    except (OSError, DataError, KeyError):
        return default
    return "|".join(map(re.escape, ids)) or default


def get_prompt(prompts_path: str | Path, subjects_path: str | Path, subject: str, prompt_id: str) -> Prompt:
    """The filled prompt `prompt_id` of `subject` (token and class noun from the subject table)."""
    info = subject_row(subjects_path, subject)
    table = load_prompts(prompts_path)
    row = table[(table["subject"] == subject) & (table["prompt_id"] == prompt_id)]
    if row.empty:
        known = ", ".join(table.loc[table["subject"] == subject, "prompt_id"]) or "none"
        raise DataError(f"prompt {prompt_id!r} of subject {subject!r} is not in {prompts_path}; known: {known}")
    template = row.iloc[0]["prompt"]
    noun, token = info["class_noun"], info["token"]
    try:
        text = template.format(token=token, class_noun=noun)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"{prompts_path}: prompt {prompt_id!r} of {subject}: bad template {template!r} "
                        f"({e}); use only {{token}} and {{class_noun}} placeholders") from None
    return Prompt(subject=subject, prompt_id=prompt_id, text=text, class_prompt=f"a {noun}",
                  class_noun=noun, token=token, template=template, set=row.iloc[0]["set"])
