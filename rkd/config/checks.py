"""The checks of a config that need more than its own values, run once by
:func:`rkd.config.load_config` after validation and before any work starts:

* the architecture and its knobs: the model is built on the meta device (no weights, no files);
* the validation split (``data.val_size``): a fraction below 1 or a whole count, that leaves
  training images (of every class, as far as the config tells without loading the data; the
  split itself refuses a class left without training images);
* the method against that model (e.g. Robust-KD's stages exist);
* every trained model the run needs (teachers, sources, MAE stages, the transfer source): its
  config is loaded and checked the same way, recursively, and the method checks it
  (e.g. MACD's teacher is an MAE).

Problems are ``(key path, message)`` pairs of one :class:`~rkd.config.errors.ConfigError`.
"""

from __future__ import annotations

import re
from typing import Callable

from rkd.config.errors import ConfigError
from rkd.config.schema import DataConfig, ExperimentConfig, ModelConfig


def architecture_problem(model: ModelConfig) -> tuple[str, str] | None:
    """``model.arch`` unknown, or a knob it does not take."""
    from rkd.models import list_models  # the model registry is the one place that knows them

    if model.arch not in list_models():
        return "model", f"unknown arch {model.arch!r}; valid: {', '.join(sorted(list_models()))}"
    try:
        model.meta_model()
    except TypeError as exc:
        m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        key = f"model.{m.group(1)}" if m else "model"
        return key, f"{model.arch} does not take {key} ({exc})"
    except ValueError as exc:
        return "model", f"{model.arch}: {exc}"
    return None


def validation_split_problem(data: DataConfig) -> tuple[str, str] | None:
    """``data.val_size`` neither a fraction (< 1) nor a whole count, or (with ``limit_train``)
    leaving fewer training images than classes."""
    from rkd.data import dataset_info, validation_count

    size = float(data.val_size)
    if size == 0:
        return None
    if size >= 1 and not size.is_integer():
        return "data.val_size", (f"{size:g} is neither a fraction of the training set (0 < val_size < 1) "
                                 "nor a whole number of images")
    if data.limit_train is None:
        return None
    n, k = data.limit_train, validation_count(data.limit_train, size)
    classes = len(data.classes) if data.classes is not None else dataset_info(data.dataset).num_classes
    if n - k < classes:
        return "data.val_size", (f"holds out {k} of the {n} training images of data.limit_train, leaving "
                                 f"{max(n - k, 0)} to train on: fewer than one per class ({classes} classes)")
    return None


def model_section_problem(data: dict) -> tuple[str, str] | None:
    """The architecture problem of a raw config whose other sections did not validate (so
    that one error lists it too); None when the model section itself does not validate."""
    section = data.get("model", {}) if isinstance(data, dict) else None
    try:
        model = ModelConfig.model_validate(section if section is not None else {})
    except ValueError:
        return None
    return architecture_problem(model)


def check_config(cfg: ExperimentConfig, where: str, load: Callable[[str, list[str]], ExperimentConfig]) -> None:
    """Raise :class:`ConfigError` (file ``where``) with every problem found; ``load`` loads (and
    checks) the config of a trained model, ``load(config, overrides)``."""
    problems = []
    split = validation_split_problem(cfg.data)
    if split is not None:
        problems.append(split)
    arch = architecture_problem(cfg.model)
    if arch is not None:
        problems.append(arch)
    else:
        try:
            cfg.method.check_architecture(cfg, cfg.model.meta_model())
        except ValueError as exc:
            problems.append(("method", str(exc)))
    models = {}
    for key, spec in cfg.trained_models().items():
        if spec.config is None:
            continue  # a finished run directory: checked when it is loaded
        try:
            models[key.removeprefix("method.")] = load(spec.config, list(spec.overrides))
        except (ConfigError, OSError) as exc:
            problems.append((f"{key}.config", f"its config: {exc}"))
    if not problems:
        try:
            cfg.method.check_models(cfg, models)
        except ValueError as exc:
            problems.append(("method", str(exc)))
    if problems:
        raise ConfigError(where, problems)
