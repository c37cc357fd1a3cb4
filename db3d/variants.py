"""The experiment, declared once: its stages, its variants and the files they write.

A *stage* is one kind of job (a rule): what it reads from the config itself, the stages whose
outputs it reads, the files it writes, its display name. A *variant* is a row of the report: the
stage whose NeRF it is judged by (its chain of stages is that stage's closure), its display names
and whether the user study and the ground-truth headline compare DreamBooth3D with it.

Everything else is derived from these two tables (db3d.workflow: the cache keys `STAGE_KEYS`, the
NeRF each variant is judged by, the rules' inputs and outputs; the Snakefile's wildcard
constraints; the CLI's `--stage` choices; the report's tables, gallery and wall times; the user
study's baselines). A new variant is a `Variant` here, and a new NeRF stage a `Stage` here plus its
config section in config/config.yaml and config/schema.yaml.

Pure data and small functions: no torch, nothing read from disk, so the Snakefile imports it for free.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# ---- file names (every rule, stage and reader spells them through these) --------------------------
NERF = "nerf.pt"                          # a fitted NeRF (db3d.nerf.checkpoint)
LOSSES = "losses.json"                    # a stage's per-step record (wall time, loss curve)
TURNTABLE = "turntable.png"               # a NeRF stage's training-time preview strip
PARTIAL = "partial.safetensors"           # the partially trained DreamBooth (guides stage 1)
FULL = "full.safetensors"                 # the fully trained DreamBooth (pseudo views, baselines)
MULTIVIEW_MODEL = "dreambooth_mv.safetensors"
MULTIVIEW_LOSSES = "dreambooth_mv_losses.json"
PSEUDO_VIEWS = "pseudo_views.pt"          # stage 2's images with their cameras
PSEUDO_VIEWS_PNG = "pseudo_views.png"     # stage 2's renders above the img2img images
PRIORS_MANIFEST = "manifest.json"         # a class-prior folder's index
# the evaluation's outputs, in runs/<setting>/<subject>/<prompt_id>/eval/<variant>/
EVAL_FILES = {"metrics": "metrics.tsv", "mesh": "mesh.glb", "mesh_obj": "mesh.obj",
              "turntable": "turntable.gif", "contact_sheet": "contact_sheet.png", "info": "eval_info.json"}
RETRIEVAL_POOL = "retrieval_pool.json"    # written beside them (the prompt and the R-Precision pool)

# config keys several stages read
DATA_KEYS = ("dataset.prompts_table", "dataset.subjects_table")
SDS_KEYS = ("nerf", "sds")
DREAMBOOTH_KEYS = ("dreambooth.partial_steps", "dreambooth.full_steps", "dreambooth.learning_rate",
                   "dreambooth.batch_size", "dreambooth.prior_loss_weight", "dreambooth.num_class_images",
                   "dreambooth.class_sample_steps", "dreambooth.train_text_encoder", "dreambooth.lora_rank")
# Evaluation reads the eval section, the CLIP/DINO ids, the NeRF's architecture and the prompt tables.
EVAL_KEYS = ("eval", "models.clip", "models.dino", "nerf") + DATA_KEYS


@dataclass(frozen=True)
class Stage:
    """One kind of job. `reads`: the config keys (or whole sections) it reads itself; its cache key
    and the config its rule passes are these plus everything its `upstream` stages depend on.
    `scope`: one job per class (`class`: cache/<backend>/class_priors/<cls>/), per subject
    (runs/<key>/<subject>/<folder>/) or per subject and prompt (runs/<key>/<subject>/<prompt_id>/<folder>/).
    `outputs`: the files its rule declares; `record`: its losses/record file (None: none).
    NeRF stages (`nerf`): SDS guided by `guide` (the upstream stage's checkpoint, "<stage>:<file>";
    None: the base model, not personalised, prompted without the subject's token), in the
    denoiser's latent space when `latent`. `preview`: an image the report's gallery shows
    (file, row label, note)."""

    name: str
    label: str
    reads: tuple[str, ...]
    upstream: tuple[str, ...] = ()
    scope: str = "prompt"
    folder: str | None = None
    outputs: tuple[str, ...] = ()
    record: str | None = None
    nerf: bool = False
    guide: str | None = None
    latent: bool = False
    preview: tuple[str, str, str] | None = None

    @property
    def dir(self) -> str:
        return self.folder or self.name

    @property
    def primary(self) -> str:
        """The file the report lists as this stage's input: its record when declared, else its first output."""
        return self.record if self.record in self.outputs else self.outputs[0]

    @property
    def personalised(self) -> bool:
        return not self.nerf or self.guide is not None


def nerf_stage(name: str, guide: str | None, upstream: tuple[str, ...], latent: bool = False) -> Stage:
    """A NeRF fitted by SDS: reads the NeRF/SDS sections, its own (`<name>.iters`, ...) and the prompts."""
    return Stage(name, name, SDS_KEYS + (name,) + DATA_KEYS, upstream, outputs=(NERF, LOSSES), record=LOSSES,
                 nerf=True, guide=guide, latent=latent)


# In pipeline order (the report's wall-time table keeps it).
STAGE_LIST: tuple[Stage, ...] = (
    Stage("class_priors", "class_priors", ("dreambooth.num_class_images", "dreambooth.class_sample_steps"),
          scope="class", outputs=(PRIORS_MANIFEST,)),
    Stage("dreambooth", "dreambooth", DREAMBOOTH_KEYS, ("class_priors",), scope="subject",
          outputs=(PARTIAL, FULL, LOSSES), record=LOSSES),
    nerf_stage("stage1", f"dreambooth:{PARTIAL}", ("dreambooth",)),
    Stage("stage2", "stage2", ("stage2", "nerf") + DATA_KEYS, ("stage1", "dreambooth"), outputs=(PSEUDO_VIEWS,),
          preview=(PSEUDO_VIEWS_PNG, "Pseudo views (stage 2)", "top: stage-1 renders; bottom: img2img")),
    Stage("multiview", "dreambooth_multiview",
          ("dreambooth.multiview_steps", "dreambooth.multiview_caption") + DREAMBOOTH_KEYS,
          ("stage2", "dreambooth", "class_priors"), folder="stage3", outputs=(MULTIVIEW_MODEL,),
          record=MULTIVIEW_LOSSES),
    nerf_stage("stage3", f"multiview:{MULTIVIEW_MODEL}", ("multiview", "stage2")),
    nerf_stage("naive", f"dreambooth:{FULL}", ("dreambooth",)),
    nerf_stage("latent_nerf", f"dreambooth:{FULL}", ("dreambooth",), latent=True),
    nerf_stage("dreamfusion", None, ()),  # the base model, prompted with the class noun: no subject
)
STAGES: dict[str, Stage] = {s.name: s for s in STAGE_LIST}


@dataclass(frozen=True)
class Variant:
    """A row of the report: the NeRF of stage `judged`. `label`: its name in tables and the user
    study; `gallery`: its row label in the report's galleries; `word`: in a sentence ("better than
    the naive baseline"). `method`: DreamBooth3D itself (exactly one); `userstudy` / `headline`:
    whether the user study / the ground-truth headline compare the method with it."""

    name: str
    judged: str
    label: str
    gallery: str
    word: str
    method: bool = False
    userstudy: bool = True
    headline: bool = False

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages its NeRF went through, in pipeline order (class priors left out: they are
        shared by backend and class, outside runs/)."""
        return chain(self.judged)

    @property
    def latent(self) -> bool:
        return STAGES[self.judged].latent


# In the report's table order: the paper's Table 1 (Latent-NeRF, DreamBooth+Fusion, DreamBooth3D), then ours.
VARIANT_LIST: tuple[Variant, ...] = (
    Variant("latent_nerf", "latent_nerf", "Latent-NeRF", "Latent-NeRF", "Latent-NeRF"),
    Variant("naive", "naive", "DreamBooth+Fusion", "Naive baseline (DreamBooth+Fusion)", "naive", headline=True),
    Variant("dreambooth3d", "stage3", "DreamBooth3D", "Final NeRF (DreamBooth3D)", "DreamBooth3D", method=True,
            userstudy=False),
    Variant("single_stage", "stage1", "Single stage (stage-1 NeRF)", "Initial NeRF (stage 1)", "single stage",
            headline=True),
    # DreamFusion (Poole et al. 2022): SDS with the base model, no personalisation - the reference for
    # prompt fidelity the method should not lose; it cannot look like the subject, so no study or headline
    Variant("dreamfusion", "dreamfusion", "DreamFusion (base model)", "DreamFusion (base model, no subject)",
            "DreamFusion", userstudy=False),
)
VARIANTS: dict[str, Variant] = {v.name: v for v in VARIANT_LIST}
METHOD = next(v.name for v in VARIANT_LIST if v.method)

# The reference rows of the ground-truth tables (db3d.eval.reference; synthetic subjects only): no
# method, two NeRFs that bracket every variant. `untrained`: the initial field at the seed, not
# one step of training (from below); `oracle`: the same field fit by plain reconstruction to true
# renders from all around, for stage 1's iteration count at SDS's learning rate (from above).
# Per reference, the config keys it reads (its rule's params, beyond the common keys).
REFERENCE_READS: dict[str, tuple[str, ...]] = {
    "untrained": ("eval", "nerf"),
    "oracle": ("eval", "nerf", "stage1.iters", "sds.learning_rate"),
}
REFERENCES: tuple[str, ...] = tuple(REFERENCE_READS)
REFERENCE_INFO = "info.json"  # a reference's details (the fit, the ground truth), beside its metrics.tsv


# ---- derived tables ---------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def chain(stage: str) -> tuple[str, ...]:
    """`stage` and every stage upstream of it, in pipeline order, without class-scoped ones."""
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name not in seen:
            seen.add(name)
            for up in STAGES[name].upstream:
                visit(up)

    visit(stage)
    return tuple(s.name for s in STAGE_LIST if s.name in seen and s.scope != "class")


@lru_cache(maxsize=None)
def stage_keys(stage: str) -> tuple[str, ...]:
    """Every config key `stage`'s output depends on: what it reads and what its upstream stages depend on."""
    out: list[str] = []
    for up in STAGES[stage].upstream:
        out += [k for k in stage_keys(up) if k not in out]
    return tuple(out + [k for k in STAGES[stage].reads if k not in out])


def nerf_stages() -> list[str]:
    """The stages that fit a NeRF (the CLI's `nerf --stage` choices)."""
    return [s.name for s in STAGE_LIST if s.nerf]


def method_stages() -> tuple[str, ...]:
    """The stages of the method's chain: each has its own rule; every other NeRF stage is a baseline."""
    return VARIANTS[METHOD].stages


def baseline_stages() -> list[str]:
    """NeRF stages outside the method's chain: rule nerf_baseline runs them all."""
    return [s for s in nerf_stages() if s not in method_stages()]


def variant_pattern() -> str:
    """The `{variant}` wildcard's constraint."""
    return "|".join(VARIANTS)


def reference_pattern() -> str:
    """The `{reference}` wildcard's constraint (rule reference)."""
    return "|".join(REFERENCES)


def order_key(variant: str) -> tuple:
    """Sort key of the report's tables: declaration order, unknown names last."""
    names = list(VARIANTS)
    return (names.index(variant) if variant in names else len(names), variant)


def label(variant: str) -> str:
    v = VARIANTS.get(variant)
    return v.label if v else variant


def labels() -> dict[str, str]:
    return {v.name: v.label for v in VARIANT_LIST}


def userstudy_baselines() -> tuple[str, ...]:
    return tuple(v.name for v in VARIANT_LIST if v.userstudy and not v.method)


def headline_baselines() -> list[str]:
    return [v.name for v in VARIANT_LIST if v.headline and not v.method]


def gallery_order() -> list[tuple[str, str]]:
    """The report gallery's rows, as ("variant", name) or ("preview", stage): along the method's
    chain (each stage's variant or preview, the method last), then the other variants."""
    judged = {v.judged: v.name for v in VARIANT_LIST}
    rows: list[tuple[str, str]] = []
    for st in method_stages():
        if STAGES[st].preview is not None:
            rows.append(("preview", st))
        if st in judged and judged[st] != METHOD:
            rows.append(("variant", judged[st]))
    rows.append(("variant", METHOD))
    shown = {name for kind, name in rows if kind == "variant"}
    return rows + [("variant", v.name) for v in VARIANT_LIST if v.name not in shown]
