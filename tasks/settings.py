"""Lethe's settings: one typed model of `params.yaml`, the only place a knob is declared.

`load_settings(file, environ)` reads the file, applies environment overrides and validates the result:
an unknown or misspelt key, or a value out of range, is refused with the key's path. There are no code
defaults: every field is required, so the file is the single source of every value. Paths in the file are
relative to the folder that holds it, so an installed Lethe finds the artefacts of the project it is
pointed at, not those of wherever its code lives.

A file may start with `extends: params.yaml` and give only the keys it changes (the text-to-image
workspace's `params.text-to-image.yaml` does); paths stay relative to the file that is loaded.

Environment overrides: `LETHE_<SECTION>__<KEY>[__<SUBKEY>]=<YAML value>`, e.g. `LETHE_TRAIN__STEPS=50`,
`LETHE_STORAGE__MLFLOW_URI=http://mlflow:5000`, `LETHE_TRAIN__WEIGHTS__SMOOTH=0`. The caller passes the
environment in, so the signature says that it is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

ENV_PREFIX = "LETHE_"
ENV_SEPARATOR = "__"

PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


class SettingsError(ValueError):
    """Settings that cannot be used; the message names every offending key by its path."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathSettings(Section):
    """Where the project's files are; relative paths are resolved against the params file's folder."""

    workspace: Path  # all run-time state: queue, MLflow store, DVC repository, caches
    data: Path  # raw data sets, tracked by data.dvc
    prepared: Path  # the `prepare` stage's tensors
    base: Path  # the shipped base generator (stage `train_base`)
    judge: Path  # the shipped judge (stage `train_judge`)
    text_to_image: Path  # the shipped text-to-image model (stage `train_text_to_image`)
    metrics: Path  # metrics and training curves of the stages
    fashion_mnist: Path  # the Debian package dataset-fashion-mnist's files
    fonts: Path  # the Debian packages fonts-dejavu-core and fonts-dejavu-extra's files

    @field_validator("*", mode="after")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        return resolved(value, info)


def resolved(value: Path | None, info: ValidationInfo) -> Path | None:
    """`value` against the params file's folder (the validation context's root), unless absolute."""
    if value is None:
        return None
    root = (info.context or {}).get("root")
    value = value.expanduser()
    return value if value.is_absolute() or root is None else (Path(root) / value).resolve()


class GeneratorSettings(Section):
    """The model the pipeline unlearns from (version 1 of a new workspace) and what judges its samples."""

    folder: Path  # a Lethe class-conditional folder (lethe.json) or a Stable-Diffusion-layout one (model_index.json)
    kind: Literal["auto", "class-conditional", "text-to-image"]  # auto = what the folder's files say
    concepts: Path | None  # text-to-image: the concept file (YAML prompt sets); None = <folder>/concepts.yaml
    judge: str | None  # None = paths.judge; a judge folder, or `package.module:callable` returning a judge

    @field_validator("folder", "concepts", mode="after")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolved(value, info)


class DataSettings(Section):
    image_size: Annotated[int, Field(ge=8, le=64)]
    digits_test_per_class: Annotated[int, Field(ge=1, le=499)]  # MNIST-5k has 500 per digit
    letters_train_per_class: PositiveInt  # rendered letters per capital, training split
    letters_test_per_class: PositiveInt  # rendered letters per capital, test split (other augmentation draws)
    letters_seed: int  # the training split's augmentation draws; the test split uses letters_seed + 1


class BaseTrainingSettings(Section):
    block_channels: Annotated[list[PositiveInt], Field(min_length=1)]
    layers_per_block: PositiveInt
    norm_groups: PositiveInt
    train_timesteps: Annotated[int, Field(ge=10)]
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    steps: PositiveInt
    batch_size: PositiveInt
    lr: Positive
    weight_decay: NonNegative
    warmup_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)]
    null_rate: Annotated[float, Field(ge=0.0, lt=1.0)]
    seed: int
    log_every: PositiveInt

    @model_validator(mode="after")
    def _groups_divide_channels(self):
        bad = [c for c in self.block_channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"norm_groups {self.norm_groups} must divide every block's channels, not {bad}")
        return self


class JudgeTrainingSettings(Section):
    width: PositiveInt
    features: PositiveInt
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: Positive
    weight_decay: NonNegative
    shift_pixels: Annotated[int, Field(ge=0, le=4)]
    seed: int
    log_every: PositiveInt


class TextToImageTrainingSettings(Section):
    """The embedded text-to-image model's recipe (stage `train_text_to_image`)."""

    vocab_size: Annotated[int, Field(ge=300)]  # BPE vocabulary: 256 bytes + 2 special tokens + merges
    tokens: Annotated[int, Field(ge=4, le=77)]  # tokenizer length = text encoder positions
    text_hidden: PositiveInt
    text_layers: PositiveInt
    text_heads: PositiveInt
    vae_channels: Annotated[list[PositiveInt], Field(min_length=1)]
    latent_channels: PositiveInt
    vae_steps: PositiveInt
    vae_lr: Positive
    vae_kl: NonNegative
    unet_channels: Annotated[list[PositiveInt], Field(min_length=2)]
    attention_heads: PositiveInt
    norm_groups: PositiveInt
    train_timesteps: Annotated[int, Field(ge=10)]
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    prediction_type: Literal["epsilon", "v_prediction"]
    steps: PositiveInt
    batch_size: PositiveInt
    lr: Positive
    empty_caption_rate: Annotated[float, Field(ge=0.0, lt=1.0)]
    seed: int
    log_every: PositiveInt

    @model_validator(mode="after")
    def _fits(self):
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_heads {self.text_heads} must divide text_hidden {self.text_hidden}")
        bad = [c for c in self.vae_channels + self.unet_channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"norm_groups {self.norm_groups} must divide every block's channels, not {bad}")
        return self


class SamplingSettings(Section):
    steps: PositiveInt
    guidance: Annotated[float, Field(ge=1.0)]  # 1.0 = no classifier-free guidance
    batch_size: PositiveInt


class AdapterSettings(Section):
    placement: Literal["saliency", "fixed"]
    candidates: Annotated[list[str], Field(min_length=1)]
    k: PositiveInt
    targets: Annotated[list[str], Field(min_length=1)]
    saliency_rows: PositiveInt
    solver: Literal["euler", "midpoint", "rk4", "explicit_adams", "implicit_adams"]
    horizon: Positive
    intensity: NonNegative
    sampling_steps: PositiveInt | None
    step_size: Positive
    hidden: PositiveInt
    time_dependent: bool  # the field sees t (benchmarks: "does the ODE matter?")

    @model_validator(mode="after")
    def _k_fits(self):
        if self.placement == "saliency" and self.k > len(self.candidates):
            raise ValueError(f"k = {self.k} exceeds the {len(self.candidates)} candidates")
        return self


class DistillSettings(Section):
    replay_per_concept: PositiveInt
    seed: int
    anchor_rule: Literal["least-confused", "nearest"]  # the automatic anchor (tasks/steps/anchor_choice.py)
    anchor_domain: Literal["same", "any"]  # prefer candidates of the concept's own domain, where known


class LossWeights(Section):
    forget: NonNegative
    retain: NonNegative
    retain_features: NonNegative
    smooth: NonNegative
    start: NonNegative
    drift: NonNegative
    adversarial: NonNegative  # rows conditioned on attack vectors (`train.adversarial`)


class AdversarialSettings(Section):
    """Adversarial forget rows (`models.attacked_rows`): `rounds` recovery attacks on the student during
    training (evenly spaced; 0 = none), each kept as rows whose target is the anchor. Class-conditional only."""

    rounds: Annotated[int, Field(ge=0)]
    attack_steps: PositiveInt  # Adam steps of each round's attack (the audit's own: recovery.steps)
    attack_lr: Positive
    attack_batch: PositiveInt
    rows: PositiveInt  # adversarial rows per training batch, once a round has run
    pool_rows: PositiveInt  # noised rows with the teacher's anchor targets, per vector found


class TrainSettings(Section):
    steps: PositiveInt
    batch_size: Annotated[int, Field(ge=2)]
    forget_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    pool_rows: Annotated[int, Field(ge=2)]
    retain_space: Literal["features", "eps"]
    lr: Positive
    seed: int
    weights: LossWeights
    adversarial: AdversarialSettings

    @model_validator(mode="after")
    def _both_kinds_of_rows(self):
        n_forget = max(1, round(self.batch_size * self.forget_fraction))
        if n_forget >= self.batch_size:
            raise ValueError(
                f"forget_fraction {self.forget_fraction} leaves no retain rows in a batch of {self.batch_size}"
            )
        return self


def check_attack_rounds(section):
    """A fit in rounds of the recovery attack (`attack_rounds`, `attack_share` beside `steps` and `batch_size`):
    the rounds must fall between steps, and each later batch hold both kinds of row."""
    rounds, share, batch = section.attack_rounds, section.attack_share, section.batch_size
    if rounds and rounds >= section.steps:
        raise ValueError(f"attack_rounds {rounds} must be fewer than steps {section.steps}")
    if rounds and not 1 <= round(batch * share) < batch:
        raise ValueError(
            f"attack_share {share} of batch_size {batch} must give at least one attacked row and leave at least "
            "one of the fit's own"
        )
    return section


class ConsolidateSettings(Section):
    """Folding the production stack into one adapter with one field per site (`models.consolidation`)."""

    every: Annotated[int, Field(ge=0)]  # when this many requests sit unconsolidated (in a batch); 0 = on demand only
    site: str | None  # one field at this whole decoder stage; None = one field per site the stack rewrites
    replay_per_concept: PositiveInt  # the stack's own samples per concept, noised into the rows
    rows: PositiveInt  # noised rows whose site features are recorded
    forgotten_share: Annotated[float, Field(gt=0.0, lt=1.0)] | None  # rows from forgotten concepts; None = alike
    hidden: PositiveInt  # the consolidated field's width (a request's field: adapter.hidden)
    grid_steps: PositiveInt  # solver steps of the consolidated field, trained and deployed alike
    steps: PositiveInt  # Adam steps of the fit
    batch_size: PositiveInt
    lr: Positive
    smooth: NonNegative  # kinetic-energy weight on the path (grid_steps > 1 only)
    seed: int
    attack_rounds: Annotated[int, Field(ge=0)]  # rounds of the recovery attack against the fold (0: none)
    attack_rows: PositiveInt  # rows kept per forgotten concept and round, conditioned on what the attack found
    attack_share: Annotated[float, Field(ge=0.0, lt=1.0)]  # share of every later batch drawn from those rows
    retry_after: PositiveInt  # requests after a rejected consolidation before the next try (1: at the next one)

    @model_validator(mode="after")
    def _rounds_fit(self):
        return check_attack_rounds(self)


class EvalSettings(Section):
    samples_per_concept: PositiveInt
    seed: int
    kid_subset: Annotated[int, Field(ge=2)]
    kid_subsets: PositiveInt
    device: Literal["auto", "cpu", "cuda"]


class GateSettings(Section):
    forget_acc_max: Fraction
    anchor_confusion_max: Fraction  # a concept's forget gate rises to its anchor's confusion, up to this
    held_out_forget_acc_max: Fraction  # the same, on held-out paraphrases (text-to-image concept files)
    retain_ratio_min: NonNegative
    kid_max_ratio: Positive
    recovery_acc_max: Fraction  # the recovery attack's success on any forgotten concept


class RegistrySettings(Section):
    model_name: Name
    experiment: Name


class StorageSettings(Section):
    mlflow_uri: str | None  # None = a SQLite store in the workspace
    dvc_remote: str | None  # None = a folder in the workspace
    queue_url: str | None  # None = a SQLite file in the workspace; postgresql://USER@HOST:PORT/DB to share
    inbox: str | None  # s3://BUCKET/PREFIX: request objects (JSON) that enter the queue; None = no inbox
    s3_endpoint: str | None  # an S3-compatible endpoint URL (None = AWS's own); credentials: AWS config

    @field_validator("queue_url", mode="after")
    @classmethod
    def _queue_location(cls, value: str | None) -> str | None:
        """A PostgreSQL URL without a password (or a SQLite path): refused here, before anything opens it."""
        if value is not None:
            from lethe.tasks.stores.queue_database import parse_location

            parse_location(value)
        return value

    @field_validator("inbox", mode="after")
    @classmethod
    def _inbox(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("s3://") or not value[5:].split("/")[0]):
            raise ValueError(f"the inbox must be s3://BUCKET/PREFIX, got {value!r}")
        return value


LADDER_RUNGS = ("anchor", "recovery", "steps", "intensity")


class EscalationSettings(Section):
    """The escalation ladder (flows/ladder.py, tasks/steps/escalation.py): a request whose attempt fails its
    gates is tried again in the same batch, each attempt adding the next rung's change to the previous
    attempt's settings."""

    attempts: Annotated[int, Field(ge=1, le=8)]  # at most, the first (as asked) included; 1 = no ladder
    budget_minutes: Positive  # the ladder's wall time: no new attempt starts once its attempts took this long
    ladder: list[Literal["anchor", "recovery", "steps", "intensity"]]  # in order; anchor: automatic-anchor requests
    # only; recovery: class-conditional models only (adversarial rows)
    steps_factor: Annotated[float, Field(gt=1.0, le=8.0)]  # the steps rung multiplies train.steps by this
    intensity: Annotated[float, Field(gt=0.0, le=4.0)]  # the intensity rung's ODE horizon (adapter.intensity)
    adversarial_rounds: Annotated[int, Field(ge=1, le=12)]  # the recovery rung's train.adversarial.rounds

    @field_validator("ladder", mode="after")
    @classmethod
    def _each_rung_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each rung at most once, got {value}")
        return value


class NotifySettings(Section):
    """Where batch summaries and alerts go: a saved Prefect notification block, by `<type-slug>/<name>` (e.g.
    custom-webhook/lethe-ops, slack-webhook/lethe). The block holds the URL and its token, so no secret is ever
    in these settings (which every version logs)."""

    block: str | None  # None = no notifications (the batch still logs and writes its Prefect artefacts)
    batch: bool  # a summary at the end of every batch that processed anything
    failed: bool  # at once when a request ends failed
    overdue: bool  # at once for each request past its due date or pending past deadlines.flag_pending_days

    @field_validator("block", mode="after")
    @classmethod
    def _block_reference(cls, value: str | None) -> str | None:
        if value is not None and (value.count("/") != 1 or "://" in value or not all(value.split("/"))):
            raise ValueError(
                f"notify.block names a saved Prefect block as <type-slug>/<name>, e.g. custom-webhook/lethe-ops, "
                f"not a URL (a webhook URL is a credential: save it in the block); got {redacted(value)!r}"
            )
        return value


class DeadlineSettings(Section):
    days: PositiveInt  # a request is due this many days after it arrives, unless it names its own due date
    flag_pending_days: PositiveInt  # a request still pending (or running) this long is flagged


class RuntimeSettings(Section):
    threads: PositiveInt | None  # torch threads; None = torch's own choice


class ReportSettings(Section):
    grid_per_concept: Annotated[int, Field(ge=1, le=32)]


class FingerprintSettings(Section):
    seed: int
    per_concept: PositiveInt


class ScheduleSettings(Section):
    name: Name
    pool: Name
    cron: str
    timezone: str


class DemoRequest(Section):
    concept: str
    anchor: str | None = None  # the one optional key: a request without an anchor gets one at run time


class DemoSettings(Section):
    requests: list[DemoRequest]


class FullFinetuneSettings(Section):
    lr: Positive
    drift_l2: NonNegative


class ESDSettings(Section):
    lr: Positive
    eta: Positive
    variant: Literal["conditioning", "u"]  # conditioning path only (ESD-x's counterpart) or every weight (ESD-u)


class LoraSettings(Section):
    lr: Positive
    rank: PositiveInt
    modules: PositiveInt | None  # the top-n salient convs; None = as many as `budget` holds
    budget: PositiveInt | None  # LoRA parameters per request: salient convs are taken while they fit
    saliency_rows: PositiveInt
    scope: Literal["candidates", "all"]  # convs inside adapter.candidates (Lethe's family), or every conv

    @model_validator(mode="after")
    def _one_size(self):
        if (self.modules is None) == (self.budget is None):
            raise ValueError("set exactly one of modules (a count of convs) and budget (a count of parameters)")
        return self


class RetrainSettings(Section):
    steps: PositiveInt | None  # None = the base recipe's steps


class BaselineSettings(Section):
    """The benchmark's baselines (benchmarks/baselines.py); Lethe itself does not read them."""

    dfr_ft: FullFinetuneSettings
    esd: ESDSettings
    fade_lora: LoraSettings
    retrain: RetrainSettings


class RecoverySettings(Section):
    """The recovery audit's budget (`models.recovery_attack`): what an attacker may spend to bring a forgotten
    concept back."""

    images: PositiveInt  # images of the concept the attacker holds (train split; see tasks/steps/recovery_audit.py)
    steps: PositiveInt  # Adam steps on the free vector (a class embedding, or a token embedding: textual inversion)
    lr: Positive
    batch_size: PositiveInt
    samples: PositiveInt  # samples drawn with the recovered vector and judged
    concepts_per_step: PositiveInt | None  # a request's audit: its concept + the least recently audited; None = all
    resurrect_steps: PositiveInt  # fine-tune on retained images only
    resurrect_lr: Positive


class ExportSettings(Section):
    """The distilled exports (`lethe export --format lora|merged`): a LoRA fitted to the version's adapted UNet."""

    lora_rank: PositiveInt  # rank of every LoRA update (alpha = rank: the stock loaders' default scaling)
    lora_dtype: Literal["float32", "float16"]  # how the LoRA's weights are stored (the gates measure them so)
    lora_scope: Literal["sites", "decoder"]  # sites: layers inside the modules the adapters rewrite; decoder: mid+up
    replay_per_concept: PositiveInt  # the version's own samples per concept, noised into the rows
    rows: PositiveInt  # noised rows (x_t, t, text) whose adapted-UNet outputs the LoRA is fitted to
    uncond_share: Annotated[float, Field(ge=0.0, lt=1.0)]  # rows on the empty prompt (guidance's other branch)
    steps: PositiveInt  # Adam steps of the fit
    batch_size: PositiveInt
    lr: Positive
    seed: int
    attack_rounds: Annotated[int, Field(ge=0)]  # rounds of the recovery attack against the fit (0: none)
    attack_rows: PositiveInt  # rows kept per forgotten concept and round, conditioned on what the attack found
    attack_share: Annotated[float, Field(ge=0.0, lt=1.0)]  # share of every later batch drawn from those rows

    @model_validator(mode="after")
    def _rounds_fit(self):
        return check_attack_rounds(self)


class Settings(Section):
    paths: PathSettings
    generator: GeneratorSettings
    data: DataSettings
    base: BaseTrainingSettings
    judge: JudgeTrainingSettings
    text_to_image: TextToImageTrainingSettings
    sampling: SamplingSettings
    adapter: AdapterSettings
    distill: DistillSettings
    train: TrainSettings
    consolidate: ConsolidateSettings
    eval: EvalSettings
    gates: GateSettings
    registry: RegistrySettings
    storage: StorageSettings
    runtime: RuntimeSettings
    report: ReportSettings
    fingerprint: FingerprintSettings
    schedule: ScheduleSettings
    demo: DemoSettings
    recovery: RecoverySettings
    baselines: BaselineSettings
    escalation: EscalationSettings
    notify: NotifySettings
    deadlines: DeadlineSettings
    export: ExportSettings

    @model_validator(mode="after")
    def _intensity_rung_raises_the_horizon(self):
        if "intensity" in self.escalation.ladder and self.escalation.intensity <= self.adapter.intensity:
            raise ValueError(
                f"escalation.intensity {self.escalation.intensity} must exceed adapter.intensity "
                f"{self.adapter.intensity}: the intensity rung raises the horizon"
            )
        return self

    @model_validator(mode="after")
    def _recovery_rung_adds_rounds(self):
        e = self.escalation
        if "recovery" in e.ladder and e.adversarial_rounds <= self.train.adversarial.rounds:
            raise ValueError(
                f"escalation.adversarial_rounds {e.adversarial_rounds} must exceed train.adversarial.rounds "
                f"{self.train.adversarial.rounds}: the recovery rung adds adversarial training"
            )
        if "recovery" in e.ladder and self.train.weights.adversarial <= 0:
            raise ValueError("train.weights.adversarial is 0: the recovery rung's adversarial rows would weigh nothing")
        return self

    @model_validator(mode="after")
    def _consolidation_site_follows_the_adapters(self):
        """A single consolidation site must come after every module an adapter may rewrite (by name: the
        decoder runs mid_block, then up_blocks.0, 1, ...; models.consolidation checks the real order too)."""
        site = self.consolidate.site
        if site is None:
            return self
        modules = self.adapter.candidates if self.adapter.placement == "saliency" else self.adapter.targets
        order = _decoder_order(site)
        if order is None or site.count(".") > (site != "mid_block"):
            raise ValueError(f"consolidate.site {site!r} must be a whole decoder stage (mid_block or up_blocks.<i>)")
        late = [m for m in modules if _decoder_order(m) is None or _decoder_order(m) > order]
        if late:
            raise ValueError(
                f"consolidate.site {site!r} does not follow every adapter module: {late} may be rewritten after it "
                "or outside the decoder; pick a later up_blocks.<i>, or null for one field per site"
            )
        return self

    def override(self, changes: Mapping[str, Any]) -> "Settings":
        """A validated copy with `{"section.key": value}` replaced (unknown keys are refused, like the file's)."""
        data = self.model_dump(mode="json")
        for key, value in changes.items():
            _assign(data, key.split("."), value, key)
        return _validate(data, None, "overrides")


def _decoder_order(module: str) -> int | None:
    """A module's decoder stage as a number (mid_block -1, up_blocks.<i> i); None outside the stages."""
    parts = module.split(".")
    if parts[0] == "mid_block":
        return -1
    if parts[0] == "up_blocks" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return None


def _assign(data: dict, path: list[str], value: Any, label: str) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        if not isinstance(node.get(part), dict):
            raise SettingsError(f"{label}: no section {'.'.join(path[: i + 1])!r} in the settings")
        node = node[part]
    if path[-1] not in node:
        raise SettingsError(f"{label}: no key {'.'.join(path)!r} in the settings")
    node[path[-1]] = value


def redacted(value: Any) -> Any:
    """`value` with the password of any URL in it replaced by ***: a settings error never prints a secret."""
    if isinstance(value, str):
        return re.sub(r"(://[^/:@\s]*):[^@/\s]*@", r"\1:***@", value)
    return value


def _validate(data: Any, root: Path | None, source: str) -> Settings:
    try:
        return Settings.model_validate(data, context={"root": root})
    except ValidationError as error:
        lines = []
        for e in error.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            message = "unknown key (misspelt?)" if e["type"] == "extra_forbidden" else e["msg"]
            if e["type"] != "extra_forbidden" and "input" in e and not isinstance(e["input"], dict):
                message += f" (got {redacted(e['input'])!r})"
            lines.append(f"  {where}: {message}")
        raise SettingsError(f"invalid settings in {source}:\n" + "\n".join(lines)) from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`{"section.key": value}` from `LETHE_SECTION__KEY=value` variables (values parsed as YAML)."""
    out = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split(ENV_SEPARATOR)
        if len(path) < 2 or not all(path):
            raise SettingsError(
                f"environment variable {name}: expected {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>, "
                f"e.g. {ENV_PREFIX}TRAIN{ENV_SEPARATOR}STEPS=50"
            )
        out[".".join(path)] = yaml.safe_load(raw) if raw.strip() else None
    return out


EXTENDS = "extends"  # a params file may start from another one and change only some keys


def read_params(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The mapping of a params file, with `extends: OTHER.yaml` (relative to the file) merged under it:
    the file's own sections replace the other's key by key, lists as a whole."""
    if not path.is_file():
        raise FileNotFoundError(
            f"params file {str(path)!r} does not exist (give --params PATH, or run from the "
            "project folder that holds params.yaml)"
        )
    if path in seen:
        raise SettingsError(f"{path}: `{EXTENDS}` loops back to a file that extends it")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SettingsError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SettingsError(f"{path}: `{EXTENDS}` names one params file, got {parent!r}")
    return _merged(read_params((path.parent / parent).resolve(), (*seen, path)), data)


def _merged(under: dict, over: dict) -> dict:
    out = dict(under)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_settings(file: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of `file` with the `LETHE_*` overrides found in `environ` (none when it is None)."""
    path = Path(file).expanduser().resolve()
    data = read_params(path)
    for key, value in env_overrides(environ or {}).items():
        _assign(data, key.split("."), value, f"{ENV_PREFIX}{key.upper().replace('.', ENV_SEPARATOR)}")
    return _validate(data, path.parent, str(path))
