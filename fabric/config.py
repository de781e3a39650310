"""One typed config base for every workload; YAML is its saved form.

Every config in fabric is a pydantic v2 model on :class:`FabricConfig`. Unknown keys are refused, values are
validated before any work starts, and errors name the field, the bad value and what is allowed.

Example:
    >>> class Train(FabricConfig):
    ...     epochs: int = Field(3, ge=1, description="Passes over the training data.")
    >>> Train.from_yaml(None, ["epochs=5"]).epochs
    5

The CLI does the same: ``fabric config show configs/smoke.yaml train.epochs=5``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from typing_extensions import Self

__all__ = ["ConfigError", "FabricConfig", "Field", "apply_override", "is_secret_key", "load_yaml"]


class ConfigError(ValueError):
    """A config file or override is wrong. The message names the field, the bad value and what is allowed."""


class FabricConfig(BaseModel):
    """Base of every fabric config: strict keys, validated values, YAML round-trip."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: Iterable[str] = ()) -> Self:
        """Loads ``path`` (or only defaults when None), applies dotted ``key=value`` overrides, validates."""
        data = load_yaml(path) if path is not None else {}
        origins: dict[tuple[str, ...], str] = {}
        for item in overrides:
            origins[apply_override(data, item)] = item
        return cls.from_dict(data, source=str(path) if path is not None else "defaults", origins=origins)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = "config", origins: dict[tuple[str, ...], str] | None = None
    ) -> Self:
        """Validates a plain dict, raising :class:`ConfigError` with one line per problem."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [_describe(cls, err, origins or {}) for err in exc.errors()]
            raise ConfigError(f"invalid {cls.__name__} in {source}:\n" + "\n".join(lines)) from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Returns the config as YAML (every field, defaults included); writes it to ``path`` when given."""
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], item: str) -> tuple[str, ...]:
    """Sets ``a.b.c=value`` in ``data`` in place; the value is parsed as YAML (``3``, ``true``, ``[1, 2]``).

    Returns the key path that was set.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value, for example train.epochs=3")
    parts = tuple(part.strip() for part in key.split("."))
    if any(not part for part in parts):
        raise ConfigError(f"override {item!r} has an empty key part in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {item!r}: {where} is a value ({child!r}), not a section with keys")
        node = child
    node[parts[-1]] = value
    return parts


def _describe(cls: type[BaseModel], err: dict[str, Any], origins: dict[tuple[str, ...], str]) -> str:
    loc = tuple(str(part) for part in err["loc"])
    field = ".".join(loc) or "(top level)"
    origin = origins.get(loc)
    if origin and is_secret_key(cls, field):
        origin = f"{field}=..."
    via = f" (from override {origin!r})" if origin else ""
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(cls, loc[:-1])
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"  {field}: unknown key{via}{hint}"
    if err["type"] == "missing":
        return f"  {field}: required field is missing"
    got = "(a secret, not shown)" if is_secret_key(cls, field) else repr(err.get("input"))
    return f"  {field}: {err['msg']}; got {got}{via}"


def is_secret_key(cls: type[BaseModel], key: str) -> bool:
    """Whether the dotted ``key`` of ``cls`` is a ``SecretStr`` field, whose value must not be echoed or saved."""
    model: Any = cls
    for part in key.split("."):
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        if SecretStr in (field.annotation, *get_args(field.annotation)):
            return True
        model = _model_in(field.annotation)
    return False


def _allowed_keys(cls: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'unknown key' messages."""
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
    fields = getattr(model, "model_fields", None)
    return sorted(fields) if fields else []


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as ``RayConfig | None``, else the annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation
