"""Device models as data: each kind's sensors, their units and plausible ranges, and its commands.

`load_models` reads the `models.yaml` shipped next to this module, merges an extension file on
top (IOT_MODELS_FILE), checks the result once and precomputes the lookups the hot paths need:
`DeviceModels.check` runs for every reading the store sees, so it is a few dict lookups and
returns the shared `CLEAN` when nothing is wrong. A broken file is a `ConfigError` of one line
naming the file and the problem.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import msgspec
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from hub.core.contract import RESERVED_FIELDS, SENSOR_PATTERN, Reading, Scalar, is_identifier
from hub.core.errors import ConfigError

#: The defaults, shipped as package data of `hub.core`.
SHIPPED_MODELS_FILE = Path(__file__).with_name("models.yaml")
#: Device ids are `<prefix>-NNNN` and must stay identifiers (at most 64 characters).
DEVICE_NUMBER_SUFFIX = "-0000"

SensorType = Literal["number", "boolean"]

_SENSOR = re.compile(SENSOR_PATTERN)
_IDENTIFIER_RULE = "use 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit"
_SENSOR_RULE = "use 1-64 of a-z, 0-9 and '_', starting with a letter"


# --- the value objects ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One sensor of a kind. Numbers have a plausible `range` and a `typical` band inside it."""

    name: str
    unit: str
    type: SensorType
    range: tuple[float, float] | None = None
    #: Where the simulator keeps a device that has no physics class (the whole range unless declared).
    typical: tuple[float, float] | None = None

    @property
    def is_boolean(self) -> bool:
        return self.type == "boolean"


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command and its arguments, as a JSON Schema property map (treat it as read-only)."""

    name: str
    description: str = ""
    args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the whole `args` object: no argument beyond the declared ones."""
        return {
            "type": "object",
            "properties": {name: dict(schema) for name, schema in self.args.items()},
            "required": list(self.required),
            "additionalProperties": False,
        }

    def usage(self) -> str:
        """How to write it on the command line: `set_setpoint value=NUMBER`."""
        return " ".join([self.name, *(f"{name}={_type_word(schema)}" for name, schema in self.args.items())])

    def describe_args(self) -> str:
        """`value: a number from 5 to 35`, one clause per argument ("" without arguments)."""
        return "; ".join(f"{name}: {describe_argument(schema)}" for name, schema in self.args.items())


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """A twin property: what a device should be, set by one argument of one command.

    Its type and range are the argument's schema (`set_setpoint`'s `value`: a number from 5 to 35).
    """

    name: str
    command: str
    arg: str
    schema: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """`a number from 5 to 35`."""
        return describe_argument(self.schema)


@dataclass(frozen=True, slots=True)
class KindSpec:
    """One device kind: its id prefix, sensors, actuator states and kind-specific commands."""

    name: str
    prefix: str
    description: str
    sensors: Mapping[str, SensorSpec]
    actuators: tuple[str, ...] = ()
    commands: Mapping[str, CommandSpec] = field(default_factory=dict)
    #: The twin's properties of this kind alone (`DeviceModels.properties` adds the common ones).
    properties: Mapping[str, PropertySpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReadingCheck:
    """What a reading does that its kind's model does not declare (`clean` when nothing)."""

    unknown_kind: bool = False
    #: Sensors the kind does not declare (every sensor, when the kind is unknown).
    unknown_sensors: tuple[str, ...] = ()
    #: A boolean where a number is declared, or the reverse.
    wrong_type: tuple[str, ...] = ()
    out_of_range: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not (self.unknown_kind or self.unknown_sensors or self.wrong_type or self.out_of_range)


#: The answer for every reading that matches its model (shared: the hot path allocates nothing).
CLEAN = ReadingCheck()
#: Bounds of a boolean sensor in the hot-path table: no number lies inside them.
_BOOLEAN_BOUNDS = (math.inf, -math.inf)


@dataclass(frozen=True, slots=True)
class DeviceModels:
    """Every kind and command the fleet knows, with the lookups precomputed at load time."""

    kinds: Mapping[str, KindSpec]
    #: Commands every kind understands.
    common_commands: Mapping[str, CommandSpec]
    #: Twin properties of every kind.
    common_properties: Mapping[str, PropertySpec] = field(default_factory=dict)
    _bounds: dict[str, dict[str, tuple[float, float]]] = field(init=False, repr=False, compare=False)
    _units: dict[str, dict[str, str]] = field(init=False, repr=False, compare=False)
    _fleet_units: dict[str, str] = field(init=False, repr=False, compare=False)
    _commands: dict[str, CommandSpec] = field(init=False, repr=False, compare=False)
    _command_kinds: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _validators: dict[str, Draft202012Validator] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounds = {
            kind.name: {
                sensor.name: _BOOLEAN_BOUNDS if sensor.range is None else sensor.range
                for sensor in kind.sensors.values()
            }
            for kind in self.kinds.values()
        }
        units = {kind.name: {s.name: s.unit for s in kind.sensors.values()} for kind in self.kinds.values()}
        seen: dict[str, set[str]] = {}
        for kind_units in units.values():
            for sensor, unit in kind_units.items():
                seen.setdefault(sensor, set()).add(unit)
        commands = dict(self.common_commands)
        command_kinds = dict.fromkeys(self.common_commands, tuple(self.kinds))
        for kind in self.kinds.values():
            for command in kind.commands.values():
                commands[command.name] = command
                command_kinds[command.name] = (*command_kinds.get(command.name, ()), kind.name)
        object.__setattr__(self, "_bounds", bounds)
        object.__setattr__(self, "_units", units)
        object.__setattr__(self, "_fleet_units", {s: u.pop() for s, u in seen.items() if len(u) == 1})
        object.__setattr__(self, "_commands", commands)
        object.__setattr__(self, "_command_kinds", command_kinds)
        object.__setattr__(self, "_validators", {n: Draft202012Validator(c.schema) for n, c in commands.items()})

    def kind(self, name: str) -> KindSpec | None:
        return self.kinds.get(name)

    def check(self, reading: Reading) -> ReadingCheck:
        """How `reading` departs from its kind's model; the shared `CLEAN` when it does not."""
        bounds = self._bounds.get(reading.kind)
        if bounds is None:
            return ReadingCheck(unknown_kind=True, unknown_sensors=tuple(reading.readings))
        for name, value in reading.readings.items():
            limits = bounds.get(name)
            if limits is None:
                return self._diagnose(bounds, reading)
            if value.__class__ is bool:
                if limits is not _BOOLEAN_BOUNDS:
                    return self._diagnose(bounds, reading)
            elif not limits[0] <= value <= limits[1]:
                return self._diagnose(bounds, reading)
        return CLEAN

    @staticmethod
    def _diagnose(bounds: dict[str, tuple[float, float]], reading: Reading) -> ReadingCheck:
        unknown, wrong, out = [], [], []
        for name, value in reading.readings.items():
            limits = bounds.get(name)
            if limits is None:
                unknown.append(name)
            elif (value.__class__ is bool) != (limits is _BOOLEAN_BOUNDS):
                wrong.append(name)
            elif not isinstance(value, bool) and not limits[0] <= value <= limits[1]:
                out.append(name)
        return ReadingCheck(unknown_sensors=tuple(unknown), wrong_type=tuple(wrong), out_of_range=tuple(out))

    def unit(self, sensor: str, kind: str | None = None) -> str:
        """The unit of `sensor` in `kind`; else the one every kind declaring it agrees on; else ""."""
        if kind is not None:
            unit = self._units.get(kind, {}).get(sensor)
            if unit is not None:
                return unit
        return self._fleet_units.get(sensor, "")

    def sensor_names(self, sensor_type: SensorType | None = None) -> tuple[str, ...]:
        """Every sensor some kind declares (of `sensor_type`, when given), sorted."""
        return tuple(
            sorted(
                {
                    sensor.name
                    for kind in self.kinds.values()
                    for sensor in kind.sensors.values()
                    if sensor_type is None or sensor.type == sensor_type
                }
            )
        )

    def command(self, name: str) -> CommandSpec | None:
        """A common or kind-specific command by name."""
        return self._commands.get(name)

    def commands(self) -> Mapping[str, CommandSpec]:
        """Every command, common ones first, then each kind's in file order."""
        return MappingProxyType(self._commands)

    def kinds_with_command(self, name: str) -> tuple[str, ...]:
        """The kinds that understand `name` (every kind for a common command; () for an unknown one)."""
        return self._command_kinds.get(name, ())

    def properties(self, kind: str) -> Mapping[str, PropertySpec]:
        """The twin properties of `kind` (the common ones first); none for an unknown kind."""
        spec = self.kinds.get(kind)
        if spec is None:
            return MappingProxyType({})
        return MappingProxyType({**self.common_properties, **spec.properties})

    def validate_property(self, kind: str, name: str, value: Scalar) -> PropertySpec:
        """The property `name` of `kind` if `value` fits it, else a `ConfigError` naming its range."""
        properties = self.properties(kind)
        spec = properties.get(name)
        if spec is None:
            takes = ", ".join(properties) or "none"
            raise ConfigError(f"{kind} has no twin property {name!r} (its properties: {takes})")
        error = best_match(Draft202012Validator(dict(spec.schema)).iter_errors(value))
        if error is not None or (isinstance(value, bool) and spec.schema.get("type") != "boolean"):
            got = json.dumps(value, ensure_ascii=False)
            raise ConfigError(f"{name} of a {kind} must be {spec.describe()} (got {got})")
        return spec

    def validate_command(self, name: str, args: Mapping[str, Scalar]) -> None:
        """`ConfigError` if `name` is a known command and `args` break its schema; unknown names pass
        (the device answers `unsupported`)."""
        validator = self._validators.get(name)
        if validator is None:
            return
        error = best_match(validator.iter_errors(dict(args)))
        if error is not None:
            raise ConfigError(_explain(self._commands[name], args, error))


def _explain(command: CommandSpec, args: Mapping[str, Scalar], error: ValidationError) -> str:
    name = command.name
    if error.validator == "required":
        missing = next(arg for arg in command.required if arg not in args)
        return f"{name} needs argument {missing!r} ({describe_argument(command.args[missing])})"
    if error.validator == "additionalProperties":
        extra = sorted(set(args) - set(command.args))[0]
        takes = ", ".join(command.args) if command.args else "no arguments"
        return f"{name} takes no argument {extra!r} (it takes {takes})"
    if error.path and str(error.path[0]) in command.args:
        arg = str(error.path[0])
        got = json.dumps(args[arg], ensure_ascii=False)
        return f"{name}: argument {arg!r} must be {describe_argument(command.args[arg])} (got {got})"
    return f"{name}: {error.message}"


# --- reading the words of a schema ---------------------------------------------------------------

_TYPE_WORDS = {"number": "NUMBER", "integer": "INTEGER", "boolean": "true|false", "string": "TEXT"}
_TYPE_PHRASES = {"number": "a number", "integer": "an integer", "boolean": "true or false", "string": "a text"}


def _type_word(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    return _TYPE_WORDS.get(kind, "VALUE") if isinstance(kind, str) else "VALUE"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe_argument(schema: Mapping[str, Any]) -> str:
    """A JSON Schema for one argument in words: `a number from 5 to 35`, `true or false`."""
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    kind = schema.get("type")
    text = _TYPE_PHRASES.get(kind, "a value") if isinstance(kind, str) else "a value"
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        text += f" from {_number(low)} to {_number(high)}"
    elif low is not None:
        text += f" of at least {_number(low)}"
    elif high is not None:
        text += f" of at most {_number(high)}"
    if "exclusiveMinimum" in schema:
        text += f" above {_number(schema['exclusiveMinimum'])}"
    if "exclusiveMaximum" in schema:
        text += f" below {_number(schema['exclusiveMaximum'])}"
    if "pattern" in schema:
        text += f" matching {schema['pattern']}"
    return text


# --- the file ------------------------------------------------------------------------------------


class _RawSensor(msgspec.Struct, forbid_unknown_fields=True):
    unit: str
    type: SensorType
    range: tuple[float, float] | None = None
    typical: tuple[float, float] | None = None


class _RawCommand(msgspec.Struct, forbid_unknown_fields=True):
    description: str = ""
    args: dict[str, dict[str, Any]] = {}
    required: list[str] = []


class _RawProperty(msgspec.Struct, forbid_unknown_fields=True):
    command: str
    arg: str


class _RawKind(msgspec.Struct, forbid_unknown_fields=True):
    prefix: str
    sensors: dict[str, Any]
    description: str = ""
    actuators: list[str] = []
    commands: dict[str, Any] = {}
    properties: dict[str, Any] = {}


class _RawFile(msgspec.Struct, forbid_unknown_fields=True):
    common_commands: dict[str, Any] = {}
    common_properties: dict[str, Any] = {}
    kinds: dict[str, Any] = {}


class _Broken(Exception):
    """A problem in one file; the caller adds the file's name."""


_T = TypeVar("_T")


def _convert(value: Any, cls: type[_T], where: str) -> _T:
    """`value` as `cls`, one level at a time so that a problem names the kind, sensor or command."""
    try:
        return msgspec.convert({} if value is None else value, cls)
    except msgspec.ValidationError as exc:
        hint = " (quote YAML words like on, off, yes and no)" if "got `bool`" in str(exc) else ""
        raise _Broken(f"{where}: {exc}{hint}" if where else f"{exc}{hint}") from None


def load_models(extra: Path | None = None) -> DeviceModels:
    """The shipped models, with `extra`'s kinds, common commands and properties added or replacing theirs."""
    common, properties, kinds = _read(SHIPPED_MODELS_FILE)
    if extra is not None:
        more_common, more_properties, more_kinds = _read(extra)
        common.update(more_common)
        properties.update(more_properties)
        kinds.update(more_kinds)
    try:
        _check_fleet(kinds, common)
        resolved = {name: _resolve(prop, common, "common property") for name, prop in properties.items()}
        kinds = {
            name: replace(
                kind,
                properties=MappingProxyType(
                    {
                        p: _resolve(prop, {**common, **kind.commands}, f"kind {name!r}: property")
                        for p, prop in kind.properties.items()
                    }
                ),
            )
            for name, kind in kinds.items()
        }
    except _Broken as exc:
        raise ConfigError(f"{extra or SHIPPED_MODELS_FILE}: {exc}") from None
    return DeviceModels(
        kinds=MappingProxyType(kinds),
        common_commands=MappingProxyType(common),
        common_properties=MappingProxyType(resolved),
    )


def _resolve(prop: PropertySpec, commands: Mapping[str, CommandSpec], where: str) -> PropertySpec:
    """`prop` with the schema of the argument that sets it; its command and argument must exist."""
    command = commands.get(prop.command)
    if command is None:
        raise _Broken(f"{where} {prop.name!r}: no command {prop.command!r} here to set it")
    schema = command.args.get(prop.arg)
    if schema is None:
        raise _Broken(f"{where} {prop.name!r}: command {prop.command!r} takes no argument {prop.arg!r}")
    return replace(prop, schema=MappingProxyType(dict(schema)))


@functools.cache
def default_models() -> DeviceModels:
    """The shipped models alone, read once: for callers that have no settings."""
    return load_models()


def _read(path: Path) -> tuple[dict[str, CommandSpec], dict[str, PropertySpec], dict[str, KindSpec]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the device models: {exc.strerror or exc}") from None
    try:
        raw = _convert(yaml.safe_load(text), _RawFile, "")
        common = {name: _command(name, spec) for name, spec in raw.common_commands.items()}
        properties = {name: _property(name, spec, "common property") for name, spec in raw.common_properties.items()}
        kinds = {name: _kind(name, spec) for name, spec in raw.kinds.items()}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    except _Broken as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return common, properties, kinds


def _kind(name: str, value: Any) -> KindSpec:
    where = f"kind {name!r}"
    if not is_identifier(name):
        raise _Broken(f"kind name {name!r} is not allowed: {_IDENTIFIER_RULE}")
    raw = _convert(value, _RawKind, where)
    if not is_identifier(raw.prefix + DEVICE_NUMBER_SUFFIX):
        raise _Broken(f"{where}: prefix {raw.prefix!r} is not allowed: {_IDENTIFIER_RULE} (at most 59)")
    if not raw.sensors:
        raise _Broken(f"{where}: declares no sensors")
    for actuator in raw.actuators:
        if not _SENSOR.match(actuator):
            raise _Broken(f"{where}: actuator name {actuator!r} is not allowed: {_SENSOR_RULE}")
    return KindSpec(
        name=name,
        prefix=raw.prefix,
        description=raw.description,
        sensors=MappingProxyType({sensor: _sensor(where, sensor, spec) for sensor, spec in raw.sensors.items()}),
        actuators=tuple(raw.actuators),
        commands=MappingProxyType({command: _command(command, spec, where) for command, spec in raw.commands.items()}),
        properties=MappingProxyType(
            {p: _property(p, spec, f"{where}: property") for p, spec in raw.properties.items()}
        ),
    )


def _property(name: str, value: Any, where: str) -> PropertySpec:
    """A property as declared; its schema comes from its command once every command is known (`_resolve`)."""
    if not _SENSOR.match(name):
        raise _Broken(f"{where} {name!r}: the name is not allowed: {_SENSOR_RULE}")
    raw = _convert(value, _RawProperty, f"{where} {name!r}")
    return PropertySpec(name, raw.command, raw.arg)


def _sensor(where: str, name: str, value: Any) -> SensorSpec:
    where = f"{where}: sensor {name!r}"
    if not _SENSOR.match(name):
        raise _Broken(f"{where}: the name is not allowed: {_SENSOR_RULE}")
    raw = _convert(value, _RawSensor, where)
    if name in RESERVED_FIELDS:
        raise _Broken(f"{where}: the name is reserved for the store")
    if raw.type == "boolean":
        if raw.range is not None or raw.typical is not None:
            raise _Broken(f"{where}: a boolean sensor has no range")
        return SensorSpec(name, raw.unit, raw.type)
    if raw.range is None:
        raise _Broken(f"{where}: a number needs its plausible range: [low, high]")
    span = _span(where, "range", raw.range)
    typical = span if raw.typical is None else _span(where, "typical", raw.typical)
    if not (span[0] <= typical[0] and typical[1] <= span[1]):
        raise _Broken(f"{where}: typical {_pair(typical)} must lie inside range {_pair(span)}")
    return SensorSpec(name, raw.unit, raw.type, span, typical)


def _span(where: str, what: str, values: tuple[float, float]) -> tuple[float, float]:
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise _Broken(f"{where}: {what} must be [low, high] with finite low < high (got {_pair(values)})")
    return low, high


def _pair(values: tuple[float, float]) -> str:
    return f"[{_number(values[0])}, {_number(values[1])}]"


def _command(name: str, value: Any, where: str = "") -> CommandSpec:
    where = f"{where}: command {name!r}" if where else f"command {name!r}"
    if not is_identifier(name):
        raise _Broken(f"{where}: the name is not allowed: {_IDENTIFIER_RULE}")
    raw = _convert(value, _RawCommand, where)
    for arg in raw.args:
        if not _SENSOR.match(arg):
            raise _Broken(f"{where}: argument name {arg!r} is not allowed: {_SENSOR_RULE}")
    undeclared = [arg for arg in raw.required if arg not in raw.args]
    if undeclared:
        raise _Broken(f"{where}: required argument {undeclared[0]!r} is not among its args")
    spec = CommandSpec(name, raw.description, MappingProxyType(raw.args), tuple(raw.required))
    try:
        Draft202012Validator.check_schema(spec.schema)
    except SchemaError as exc:
        path = ".".join(str(p) for p in exc.path if p != "properties")
        raise _Broken(f"{where}: not a valid JSON Schema{f' at {path}' if path else ''}: {exc.message}") from None
    return spec


def _check_fleet(kinds: Mapping[str, KindSpec], common: Mapping[str, CommandSpec]) -> None:
    """What only the merged result can break: unique prefixes, one meaning per command name."""
    prefixes: dict[str, str] = {}
    commands: dict[str, tuple[str, CommandSpec]] = {}
    for kind in kinds.values():
        other = prefixes.setdefault(kind.prefix, kind.name)
        if other != kind.name:
            raise _Broken(f"kinds {other!r} and {kind.name!r} share the prefix {kind.prefix!r}")
        for command in kind.commands.values():
            if command.name in common:
                raise _Broken(f"kind {kind.name!r}: command {command.name!r} is common to every kind already")
            first, spec = commands.setdefault(command.name, (kind.name, command))
            if (spec.args, spec.required) != (command.args, command.required):
                raise _Broken(
                    f"command {command.name!r} takes different arguments in kinds {first!r} and {kind.name!r}"
                )
