"""The DreamBooth dataset: prompt/subject tables, per-subject image builds and their loader.

- `prompts`: parses the dataset's `prompts_and_classes.txt` / `references_and_licenses.txt` into the
  committed tables `config/subjects.tsv` and `config/prompts.tsv`, and reads them back.
- `build`: one subject's photos -> square crops at each resolution + foreground masks + meta.json.
- `masks`: the offline foreground-mask method the build uses.
- `subject`: loads a built subject folder as tensors for training and evaluation.

See docs/data.md for the layout, the policies on bad input and how good the masks are.
"""
