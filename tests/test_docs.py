"""The README and docs/ name only things that exist: every `python -m db3d <command>` (and its
`--options`), every `python -m <module>`, every repository path and every dotted config key they
write in backticks or code blocks. A doc contradicting the code is a bug; this catches the names.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md")) + [REPO / "ablations" / "README.md"]
# folders a path may start with and must then exist in the repository; the rest (runs/, results/,
# reports/, cache/, logs/, data/, models/toy/...) are what the workflow writes
SOURCE_DIRS = ("db3d/", "config/", "rules/", "docs/", "tests/", "scripts/", "ablations/", "envs/", "profiles/")
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
FILE_SUFFIXES = {"tsv", "json", "pt", "md", "png", "gif", "yaml", "py", "txt", "pdf", "safetensors", "glb", "obj"}
# every string literal of the package, for names the docs quote that are labels, not config keys
CODE_STRINGS = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "db3d").rglob("*.py"))


def _code_spans(text: str) -> list[str]:
    """Inline `code` and the lines of fenced code blocks."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    indented = [m for m in re.findall(r"(?m)^    (\S.*)$", rest)]
    return re.findall(r"`([^`\n]+)`", rest) + [ln for b in blocks for ln in b.splitlines()] + indented


def _spans():
    for doc in DOCS:
        for span in _code_spans(doc.read_text(encoding="utf-8")):
            yield doc.relative_to(REPO).as_posix(), span


def _schema_has(key: str) -> bool:
    node = SCHEMA
    for part in key.split("."):
        props = node.get("properties") if isinstance(node, dict) else None
        if not props or part not in props:
            # a free-form section (no properties listed) takes any key below it
            return isinstance(node, dict) and "properties" not in node and node.get("type") == "object"
        node = props[part]
        while isinstance(node, dict) and "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].split("/")[-1]]
    return True


def _subcommands(parser) -> dict:
    sub = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sub[0].choices if sub else {}


def _db3d_parser():
    from db3d.cli import build_parser

    return _subcommands(build_parser())


def test_commands_exist():
    choices = _db3d_parser()
    bad = []
    for doc, span in _spans():
        for m in re.finditer(r"python -m (db3d(?:\.[a-z_.]+)?)(?:\s+([a-z][a-z-]*))?((?:\s+\S+)*)", span):
            module, command, rest = m.group(1), m.group(2), m.group(3) or ""
            if module != "db3d":
                if importlib.util.find_spec(module) is None:
                    bad.append(f"{doc}: python -m {module}: no such module")
                continue
            if command is None or command == "command":
                continue
            if command not in choices:
                bad.append(f"{doc}: python -m db3d {command}: no such command ({', '.join(sorted(choices))})")
                continue
            parser = choices[command]
            words = rest.split()
            nested = _subcommands(parser)
            if nested and words and words[0] in nested:  # userstudy build|serve|analyse
                parser = nested[words[0]]
            known = {o for a in parser._actions for o in a.option_strings}
            for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                if opt not in known:
                    bad.append(f"{doc}: python -m db3d {command} {opt}: no such option")
    assert not bad, "\n".join(bad)


def test_paths_exist():
    bad = []
    for doc, span in _spans():
        for token in re.findall(r"[A-Za-z0-9_./-]+", span):
            token = token.rstrip(".,:;")
            if not token.startswith(SOURCE_DIRS) or token.endswith("/."):
                continue
            if "*" in span[span.find(token):span.find(token) + len(token) + 1]:  # a glob: tests/test_eval*.py
                continue
            if not (REPO / token).exists():
                bad.append(f"{doc}: {token}")
    assert not bad, "paths named in the docs that do not exist:\n" + "\n".join(sorted(set(bad)))


def test_config_keys_exist():
    top = set(SCHEMA["properties"])
    bad = []
    for doc, span in _spans():
        # `section.key` and `section.key: value` forms, in config sections the schema knows
        for key in re.findall(r"(?<![\w./-])([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?![\w/(-])", span):
            head = SCHEMA["properties"].get(key.split(".")[0], {})
            if key.split(".")[0] not in top or head.get("type") != "object":
                continue  # `backend.save_finetuned`: an object's method, not a key
            if key.rsplit(".", 1)[-1] in FILE_SUFFIXES or f'"{key}"' in CODE_STRINGS:
                continue  # a file name (userstudy.tsv) or a label the code writes (profiler's "sds.unet")
            if not _schema_has(key):
                bad.append(f"{doc}: {key}")
    assert not bad, "config keys named in the docs that the schema does not have:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("doc", [d.relative_to(REPO).as_posix() for d in DOCS])
def test_no_removed_hub_cli(doc):
    """huggingface_hub >= 1.0 (the pinned one) has `hf`, not `huggingface-cli`."""
    assert "huggingface-cli" not in (REPO / doc).read_text(encoding="utf-8")
