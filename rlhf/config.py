"""Typed, nested dataclass configs: YAML in, dotted ``key=value`` overrides, validation, help.

Every stage has one config class made of nested dataclasses. Each field is declared with
:func:`opt`, which carries its one-line help text and simple constraints (``choices``, bounds).
Cross-field rules live in a ``validate(self)`` method on the dataclass that raises
:class:`ConfigError` naming the field. Loading goes

    YAML file -> dict  ->  dotted overrides applied  ->  typed dataclass  ->  validate

and everything is rejected before any work starts, with a message that names the full dotted
key and says what is allowed. Configs are frozen after loading (house rule 4: never mutated
while training); :func:`replace_path` makes a modified copy when a caller needs one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ConfigError",
    "opt",
    "load_config",
    "from_dict",
    "to_dict",
    "to_yaml",
    "save_config",
    "apply_overrides",
    "replace_path",
    "iter_fields",
    "format_help",
    "reference_markdown",
    "schema_of",
    "class_from_schema",
    "load_data",
]


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or impossible.

    ``key`` is the dotted path of the offending field (``train.lr``); ``str(err)`` reads
    ``"train.lr: must be > 0 (got -1.0)"``.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` prepended to its key."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return ConfigError(key, self.message)


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    choices: typing.Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """Declare a config field with its one-line help and constraints.

    ``factory`` is for mutable defaults (nested dataclasses, lists). ``choices`` restricts the
    value to a set; ``ge/gt/le/lt`` bound numbers (``None`` values skip the bound check).
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "ge": ge, "gt": gt, "le": le, "lt": lt}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --------------------------------------------------------------------------- typing helpers


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(True, inner) for ``X | None`` / ``Optional[X]``; (False, tp) otherwise."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007 (built at run time)
            return True, inner
    return False, tp


def _type_name(tp: Any) -> str:
    opt_, inner = _is_optional(tp)
    if opt_:
        return f"{_type_name(inner)} or null"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to ``tp`` or raise ConfigError naming ``key``.

    YAML already gives ints, floats, bools and lists; the CLI gives strings that were parsed
    with YAML rules, so both arrive here in the same shape.
    """
    is_opt, inner = _is_optional(tp)
    if value is None:
        if is_opt:
            return None
        raise ConfigError(key, f"must not be null (expected {_type_name(tp)})")
    tp = inner
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool):
            # YAML 1.1 reads no/off/yes/on as booleans: map back to the choice that was written.
            for a in allowed:
                if isinstance(a, str) and yaml.safe_load(a) is value:
                    return a
        if value not in allowed:
            raise _not_one_of(key, allowed, value)
        return value
    if origin in (Union, types.UnionType):
        for alt in get_args(tp):
            try:
                return _coerce(value, alt, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            hint = f" (a list of one: {key}=[{value}] on the command line)" if isinstance(value, str) else ""
            raise ConfigError(key, f"expected a list, got {value!r}{hint}")
        (elem,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, f"expected a string, got {value!r}")
    raise ConfigError(key, f"unsupported field type {tp!r}")  # pragma: no cover


def did_you_mean(value: Any, names: typing.Sequence[Any]) -> str:
    """``"; did you mean 'gspo'?"`` when a string ``value`` is close to one of ``names``, else ``""``."""
    strs = [n for n in names if isinstance(n, str)]
    close = difflib.get_close_matches(value, strs, n=1, cutoff=0.6) if isinstance(value, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _not_one_of(key: str, allowed: typing.Sequence[Any], value: Any) -> ConfigError:
    """The error for a value outside its choices, with the closest choice when one is near
    (``ppo.loss=gpso`` -> "did you mean 'gspo'?")."""
    hint = did_you_mean(value, allowed)
    return ConfigError(key, f"must be one of {', '.join(map(repr, allowed))} (got {value!r}){hint}")


def _check_constraints(value: Any, f: dataclasses.Field[Any], key: str) -> None:
    meta = f.metadata
    if value is None:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise _not_one_of(key, meta["choices"], value)
    for bound, op, word in (("ge", float.__ge__, ">="), ("gt", float.__gt__, ">"),
                            ("le", float.__le__, "<="), ("lt", float.__lt__, "<")):
        b = meta.get(bound)
        if b is not None and isinstance(value, (int, float)) and not op(float(value), float(b)):
            raise ConfigError(key, f"must be {word} {b} (got {value!r})")


def _validate_tree(obj: Any, prefix: str) -> None:
    """Run every nested dataclass's ``validate()``, innermost first, prefixing error keys."""
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            _validate_tree(child, f"{prefix}.{f.name}" if prefix else f.name)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise (e.under(prefix) if prefix else e) from None


# --------------------------------------------------------------------------- public API


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, checking names, types and constraints.

    Nested dicts become nested dataclasses. Unknown keys are rejected with a suggestion.
    ``validate()`` hooks run only at the top level (see :func:`load_config`), so that
    cross-field rules see the whole, final config.
    """
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"expected a mapping, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(key, f"unknown key for {cls.__name__}{hint} "
                                   f"(allowed: {', '.join(sorted(fields))})")
        value = _coerce(value, hints[name], key)
        _check_constraints(value, fields[name], key)
        kwargs[name] = value
    for name, f in fields.items():
        if name in kwargs:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(key, f"is required ({f.metadata.get('help', '')})".rstrip(" ()"))
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    resolved: dict[str, Any] = plain(cfg)
    return resolved


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(item, "overrides are written key=value, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(item, "override has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed with YAML rules)."""
    data = _deepcopy_dict(data)
    for item in overrides:
        key, value = _parse_override(item)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is a value, not a section (in override {item!r})")
            node = nxt
        node[parts[-1]] = value
    return data


def _deepcopy_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy_dict(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(cls: type, path: str | Path | None = None,
                overrides: typing.Iterable[str] = (), base: dict[str, Any] | None = None) -> Any:
    """Load ``cls`` from a YAML file (optional) plus dotted overrides, then validate.

    Raises :class:`ConfigError` for anything wrong, naming the key; the file name is
    prefixed for YAML syntax errors.
    """
    cfg = from_dict(cls, load_data(path, overrides, base))
    _validate_tree(cfg, "")
    return cfg


def load_data(path: str | Path | None = None, overrides: typing.Iterable[str] = (),
              base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plain dict :func:`load_config` types: ``base``, then the YAML file, then the overrides."""
    data: dict[str, Any] = _deepcopy_dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("", f"config file not found: {path}")
        loaded = read_yaml(path, ConfigError)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("", f"{path}: the top level must be a mapping of sections")
        data = _merge(data, loaded)
    return apply_overrides(data, overrides)


def yaml_error_line(path: str | Path, e: Exception) -> str:
    """A YAML syntax error as one line: ``file:line:column: not valid YAML (problem)``
    (PyYAML's own message spans several lines with a drawing of the spot)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    if "'\\t'" in str(e):  # the scanner's "found character '\\t' that cannot start any token"
        line = f" (line {mark.line + 1})" if mark is not None else ""
        return f"{path}: a tab character{line}: YAML indentation must use spaces, not tabs"
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or " ".join(str(e).split())
    return f"{path}{where}: not valid YAML ({problem})"


def read_yaml(path: str | Path, error: Callable[..., Exception] | None = None) -> Any:
    """``yaml.safe_load`` of a UTF-8 file; a syntax or encoding error raises ``error(message)``
    (ConfigError: ``error("", message)``) with one line naming the file and the spot."""
    path = Path(path)
    make = (lambda m: ConfigError("", m)) if error is None or error is ConfigError else error
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise make(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})") from None
    except yaml.YAMLError as e:
        raise make(yaml_error_line(path, e)) from None


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = _deepcopy_dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def replace_path(cfg: Any, key: str, value: Any) -> Any:
    """A copy of ``cfg`` with the dotted ``key`` set to ``value`` (configs stay immutable)."""
    head, _, rest = key.partition(".")
    if rest:
        return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: value})


def iter_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Any, str, list[str]]]:
    """Yield ``(dotted_key, type_name, default, help, constraints)`` for every leaf field."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        _, inner = _is_optional(tp)
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            yield from iter_fields(inner, key)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        meta = f.metadata
        cons = []
        if meta.get("choices"):
            cons.append("one of " + ", ".join(map(str, meta["choices"])))
        for b, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if meta.get(b) is not None:
                cons.append(f"{word} {meta[b]}")
        yield key, _type_name(tp), default, meta.get("help", ""), cons


def _fmt_default(d: Any) -> str:
    if d is dataclasses.MISSING:
        return "(required)"
    if d is None:
        return "null"
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, str):
        return repr(d) if d == "" else d
    return str(d)


def format_help(cls: type) -> str:
    """Plain-text list of every option: ``key (type, default): help``."""
    lines = []
    section = None
    for key, tname, default, help_, cons in iter_fields(cls):
        sec = key.rsplit(".", 1)[0] if "." in key else ""
        if sec != section:
            section = sec
            lines.append(f"\n[{sec or 'top level'}]")
        extra = f"; {', '.join(cons)}" if cons else ""
        lines.append(f"  {key}  ({tname}, default {_fmt_default(default)}{extra})")
        if help_:
            lines.append(f"      {help_}")
    return "\n".join(lines).lstrip("\n")


def reference_markdown(classes: dict[str, type]) -> str:
    """The configuration reference page (docs/configuration.md), generated from the classes."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses by `python -m rlhf.docs`; do not edit by hand",
        "(a test fails when this page is stale). Every key can be set in the stage's YAML file",
        "or on the command line as a dotted override: `rlhf sft --recipe tiny train.lr=1e-4`.",
        "",
    ]
    for stage, cls in classes.items():
        out += [f"## `rlhf {stage}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        for key, tname, default, help_, cons in iter_fields(cls):
            extra = f" ({'; '.join(cons)})" if cons else ""
            d = _fmt_default(default).replace("|", "\\|")
            t = tname.replace("|", "\\|")
            out.append(f"| `{key}` | {t} | `{d}` | {help_}{extra} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- schema (fast CLI checks)
#
# The config classes live next to their recipes, which import torch and transformers (seconds).
# ``rlhf <stage>`` checks a config before that: rlhf/_stage_schema.json (generated by ``make docs``,
# kept current by a test) describes each class's fields, and :func:`class_from_schema` rebuilds
# look-alike dataclasses from it, so that :func:`from_dict` applies the same key, type, choice and
# bound checks, with the same messages. Cross-field ``validate()`` rules run later, on the real class.


def _type_schema(tp: Any) -> Any:
    is_opt, inner = _is_optional(tp)
    if is_opt:
        return {"optional": _type_schema(inner)}
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return schema_of(tp)
    if origin is Literal:
        return {"literal": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        return {"union": [_type_schema(a) for a in get_args(tp)]}
    if origin in (list, tuple):
        args = get_args(tp)
        return {"list": _type_schema(args[0]) if args else "any", "tuple": origin is tuple}
    if origin is dict:
        return "dict"
    if tp is Any:
        return "any"
    if tp in (bool, int, float, str):
        return tp.__name__
    raise TypeError(f"no schema for field type {tp!r}")  # pragma: no cover


def schema_of(cls: type) -> dict[str, Any]:
    """A JSON-able description of config class ``cls``: its name and, per field, its type,
    whether it is required, and its ``opt`` metadata (help, choices, bounds)."""
    hints = _hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in f.metadata.items()
                if v is not None and (k != "help" or required)}  # help only where an error message uses it
        fields.append({"name": f.name, "type": _type_schema(hints[f.name]), "required": required, "meta": meta})
    return {"dataclass": cls.__name__, "fields": fields}


def _type_from_schema(s: Any) -> Any:
    if isinstance(s, str):
        return {"bool": bool, "int": int, "float": float, "str": str, "any": Any, "dict": dict[str, Any]}[s]
    if "dataclass" in s:
        return class_from_schema(s)
    if "optional" in s:
        return typing.Optional[_type_from_schema(s["optional"])]  # noqa: UP045 (built at run time)
    if "literal" in s:
        return Literal[tuple(s["literal"])]
    if "union" in s:
        return Union[tuple(_type_from_schema(a) for a in s["union"])]  # noqa: UP007 (built at run time)
    elem = _type_from_schema(s["list"])
    return tuple[elem] if s["tuple"] else list[elem]  # type: ignore[valid-type]


def class_from_schema(schema: dict[str, Any]) -> type:
    """A dataclass with the fields, types and constraints that :func:`schema_of` described (no
    ``validate()``; defaults are placeholders): enough for :func:`from_dict` to check a config."""
    specs = []
    for f in schema["fields"]:
        meta = {k: (tuple(v) if isinstance(v, list) else v) for k, v in f["meta"].items()}
        field = dataclasses.field(metadata=meta) if f["required"] else dataclasses.field(default=None, metadata=meta)
        specs.append((f["name"], _type_from_schema(f["type"]), field))
    return dataclasses.make_dataclass(schema["dataclass"], specs, kw_only=True, frozen=True)
