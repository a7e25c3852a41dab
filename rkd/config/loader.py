"""Load YAML experiment configs: ``base`` inheritance, ``key=value`` overrides, validation.

* ``base: other.yaml`` (relative to the file) or ``base: preset:NAME`` makes a file a deep-merged
  overlay of another; chains are allowed, cycles are rejected.
* Overrides use dotted paths; list items by index: ``train.epochs=3``,
  ``eval.attacks.0.eps=4/255``, ``method.name=adversarial``. Values are parsed as YAML.
* Everything is validated by :class:`rkd.config.schema.ExperimentConfig` before any work starts;
  problems raise :class:`ConfigError` naming the file and each key path.
* Only a ``yaml.SafeLoader`` is used (UniqueKeyLoader, which also refuses duplicate keys): no
  tags that construct objects or run code.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from rkd.config.checks import check_config, model_section_problem
from rkd.config.errors import ConfigError
from rkd.config.schema import ExperimentConfig

PRESET_PREFIX = "preset:"


def list_presets() -> list[str]:
    """Names of the configs shipped inside the package (``rkd/presets/*.yaml``)."""
    root = resources.files("rkd") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping with a key given twice (plain YAML keeps the
    last one silently: ``lr: 0.1`` then ``lr: 0.01`` further down would quietly win)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            lines = f"lines {seen[key] + 1} and {key_node.start_mark.line + 1}"
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    f"key {key!r} given twice ({lines})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read_yaml(source: str) -> tuple[dict, str, Path | None]:
    """Read a file path or ``preset:NAME``; return (mapping, display name, directory)."""
    if source.startswith(PRESET_PREFIX):
        name = source[len(PRESET_PREFIX):]
        res = resources.files("rkd") / "presets" / f"{name}.yaml"
        if not res.is_file():
            raise ConfigError(source, [("", f"no such preset; available: {', '.join(list_presets())}")])
        text, where, folder = res.read_text(), source, None
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(source, [("", "config file not found")])
        text, where, folder = path.read_text(), str(path), path.parent
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(where, [("", f"not valid YAML: {exc}")]) from None
    if data is None:  # an empty file is a mistake (a wrong path, a truncated copy), not "all defaults"
        raise ConfigError(where, [("", "the file is empty; an all-defaults run is `rkd train preset:digits` or a "
                                       "file with only `name: ...`")])
    if not isinstance(data, dict):
        raise ConfigError(where, [("", f"top level must be a mapping, got {type(data).__name__}")])
    return data, where, folder


#: sections replaced, not merged, when an overlay changes this key
_SECTION_TAGS = {"method": "name", "model": "arch"}


def deep_merge(base: dict, overlay: dict) -> dict:
    """Recursively merge mappings; overlay wins; lists are replaced, not concatenated.

    A ``method`` overlay that changes ``name``, or a ``model`` overlay that changes ``arch``,
    replaces the whole section, since the keys of one method (architecture) mean nothing to
    another.
    """
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        tag = _SECTION_TAGS.get(key)
        if (
            key in out and isinstance(out[key], dict) and isinstance(value, dict)
            and not (tag and value.get(tag, out[key].get(tag)) != out[key].get(tag))
        ):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(source: str, _seen: tuple[str, ...] = ()) -> tuple[dict, str]:
    """The merged (not yet validated) mapping of ``source`` and its ``base`` chain."""
    data, where, folder = _read_yaml(source)
    base = data.pop("base", None)
    if base is None:
        return data, where
    if not isinstance(base, str):
        raise ConfigError(where, [("base", "must be a path or 'preset:NAME'")])
    if not base.startswith(PRESET_PREFIX) and folder is not None:
        base = str((folder / base))
    key = str(Path(base).resolve()) if not base.startswith(PRESET_PREFIX) else base
    if key in _seen:
        raise ConfigError(where, [("base", f"inheritance cycle through {base}")])
    parent, _ = load_raw(base, _seen + (key,))
    return deep_merge(parent, data), where


def _set_path(data: dict, dotted: str, value: Any, defaults: Any) -> None:
    """Set ``dotted`` in ``data``; a section or list missing from ``data`` is first copied
    from ``defaults`` (the schema defaults), so overrides reach into unspelled sections."""
    parts = dotted.split(".")
    node: Any = data
    default: Any = defaults
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError("<override>", [(dotted, f"list index {part!r} out of range (length {len(node)})")])
            idx = int(part)
            if last:
                node[idx] = value
                return
            node = node[idx]
            default = default[idx] if isinstance(default, list) and idx < len(default) else None
            continue
        if not isinstance(node, dict):
            raise ConfigError("<override>", [(dotted, f"{'.'.join(parts[:i])} is not a section")])
        if last:
            if part == "name" and parts[0] == "method" and len(parts) == 2 and node.get("name") != value:
                node.clear()  # switching method: the old method's keys do not apply
            node[part] = value
            return
        default = default.get(part) if isinstance(default, dict) else None
        if node.get(part) is None:
            node[part] = copy.deepcopy(default) if isinstance(default, (dict, list)) else {}
        node = node[part]


def apply_overrides(data: dict, overrides: Iterable[str], defaults: dict | None = None) -> dict:
    """Apply ``key=value`` strings (values parsed as YAML) to a raw mapping.

    ``defaults`` (the dumped schema defaults) lets an override reach into a section or list the
    file did not spell out, e.g. ``eval.attacks.0.eps=2/255`` on the default grid.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("<override>", [(item, "expected key=value")])
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError("<override>", [(key, f"value is not valid YAML: {exc}")]) from None
        _set_path(out, key, value, defaults)
    return out


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def validate(data: dict, source: str) -> ExperimentConfig:
    """Validate a raw mapping, then run the checks that look beyond it
    (:func:`rkd.config.checks.check_config`); raise ConfigError listing every problem with its
    key path."""
    cfg = _validate_values(data, source)
    check_config(cfg, source, load_config)
    return cfg


def _validate_values(data: dict, source: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        arch = model_section_problem(data)
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
                msg = f"{msg} (got {err['input']!r})"
            problems.append((_format_loc(err["loc"]), msg))
        raise ConfigError(source, problems + ([arch] if arch else [])) from None


def load_config(source: str | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load, merge, override and validate a config. ``source=None`` means schema defaults."""
    overrides = list(overrides)
    if source is None:
        data, where = {}, "<defaults>"
    else:
        data, where = load_raw(source)
    if overrides:
        defaults = ExperimentConfig().model_dump(mode="json")
        data = apply_overrides(data, overrides, defaults)
        where = f"{where} (with overrides {' '.join(overrides)})"
    return validate(data, where)


def config_from_dict(data: dict, source: str = "<dict>") -> ExperimentConfig:
    return validate(copy.deepcopy(data), source)


def dump_config(cfg: ExperimentConfig) -> str:
    """The fully resolved config as YAML (every default spelled out); reloadable."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(cfg))
    return path


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [x, y]}`` -> ``{"a.b": 1, "l.0...": ...}`` for MLflow params."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = data
    return out
