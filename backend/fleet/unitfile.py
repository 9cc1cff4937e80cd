"""Provides the systemd unit file parser with fleet's [X-Fleet] options and unit name rules."""

from __future__ import annotations

import hashlib
import re
import signal
from dataclasses import dataclass, field

SECTIONS = ("Unit", "Service", "X-Fleet", "Install")
UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".path",
    ".target",
    ".mount",
    ".automount",
    ".device",
    ".swap",
)
SERVICE_TYPES = ("simple", "oneshot", "notify", "forking")
RESTART_POLICIES = ("no", "on-failure", "on-abnormal", "always")
KILL_MODES = ("control-group", "process")
# Matched whole (re.fullmatch): `$` with re.match would let a trailing newline through.
_NAME_RE = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?")
_TIME_UNITS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_SPAN_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")


class UnitFileError(ValueError):
    """A unit file or unit name is malformed; ``line`` is 1-based, 0 when no line applies."""

    def __init__(self, reason: str, line: int = 0, name: str = "") -> None:
        self.reason = reason
        self.line = line
        self.name = name
        where = f"{name}: " if name else ""
        at = f"line {line}: " if line else ""
        super().__init__(f"{where}{at}{reason}")


def validate_name(name: str) -> None:
    """Raise :class:`UnitFileError` unless ``name`` is a valid unit name (``x.service``)."""
    if not name or len(name) > 255:
        raise UnitFileError("unit name must be 1 to 255 characters", name=name)
    suffix = next((s for s in UNIT_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise UnitFileError(f"unit name needs a type suffix such as .service: {name!r}")
    stem = name[: -len(suffix)]
    if not stem or not _NAME_RE.fullmatch(stem) or stem.startswith("@"):
        raise UnitFileError(f"invalid unit name {name!r}")
    if stem.startswith("-"):
        # It would read as an option wherever the name becomes a word of a command line.
        raise UnitFileError(f"invalid unit name {name!r}: it must not start with '-'")


def normalize_name(name: str) -> str:
    """A bare name gets ``.service``, as fleetctl does."""
    return name if any(name.endswith(s) for s in UNIT_SUFFIXES) else name + ".service"


@dataclass(frozen=True)
class UnitName:
    """The parts of a unit name that templates and specifiers use."""

    full: str
    prefix: str
    instance: str
    suffix: str

    @classmethod
    def parse(cls, name: str) -> UnitName:
        stem, dot, suffix = name.rpartition(".")
        if not dot:
            stem, suffix = name, ""
        prefix, at, instance = stem.partition("@")
        return cls(name, prefix, instance if at else "", "." + suffix if suffix else "")

    @property
    def is_template(self) -> bool:
        return "@" in self.full and not self.instance

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)

    @property
    def template(self) -> str:
        """``name@.service`` for an instance ``name@x.service``; the name itself otherwise."""
        return f"{self.prefix}@{self.suffix}" if self.is_instance else self.full


def expand_specifiers(value: str, name: str) -> str:
    """Replace %n %N %p %i %% in ``value`` for the unit ``name``; unknown ones stay as they are."""
    if "%" not in value:
        return value
    parts = UnitName.parse(name)
    table = {
        "n": parts.full,
        "N": parts.full[: -len(parts.suffix)] if parts.suffix else parts.full,
        "p": parts.prefix,
        "i": parts.instance,
        "%": "%",
    }
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), value, flags=re.S)


def split_words(value: str) -> list[str]:
    """Split a value into words the way systemd does: quotes group, backslash escapes.

    Raises ValueError on an unterminated quote or a trailing backslash.
    """
    words: list[str] = []
    index = 0
    length = len(value)
    while index < length:
        while index < length and value[index] in " \t":
            index += 1
        if index >= length:
            break
        word: list[str] = []
        quote = ""
        while index < length:
            char = value[index]
            if quote:
                if char == quote:
                    quote = ""
                elif char == "\\" and index + 1 < length:
                    index += 1
                    word.append(_escape(value[index]))
                elif char == "\\":
                    raise ValueError("trailing backslash")
                else:
                    word.append(char)
            elif char in "\"'":
                quote = char
            elif char in " \t":
                break
            elif char == "\\":
                if index + 1 >= length:
                    raise ValueError("trailing backslash")
                index += 1
                word.append(_escape(value[index]))
            else:
                word.append(char)
            index += 1
        if quote:
            raise ValueError(f"unterminated {quote} quote")
        words.append("".join(word))
    return words


def _escape(char: str) -> str:
    return {"n": "\n", "t": "\t", "r": "\r"}.get(char, char)


def parse_timespan(value: str) -> float:
    """``5``, ``100ms``, ``1min 30s`` or ``infinity`` in seconds; raises ValueError."""
    text = value.strip().lower()
    if text == "infinity":
        return float("inf")
    if not text:
        raise ValueError("empty time span")
    total = 0.0
    position = 0
    for match in _SPAN_RE.finditer(text):
        if text[position : match.start()].strip():
            break
        unit = match.group(2) or "s"
        if unit not in _TIME_UNITS:
            raise ValueError(f"unknown time unit {unit!r}")
        total += float(match.group(1)) * _TIME_UNITS[unit]
        position = match.end()
    if text[position:].strip() or position == 0:
        raise ValueError(f"invalid time span {value!r}")
    return total


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected a boolean (yes/no, true/false, 1/0), got {value!r}")


def parse_signal(value: str) -> int:
    text = value.strip().upper()
    if text.isdigit():
        number = int(text)
        if number in {s.value for s in signal.Signals}:
            return number
        raise ValueError(f"unknown signal {value!r}")
    name = text if text.startswith("SIG") else "SIG" + text
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {value!r}") from None


@dataclass
class Option:
    """One ``Key=value`` assignment and the line it started on."""

    key: str
    value: str
    line: int


@dataclass(frozen=True)
class ExecCommand:
    """One Exec*= line: its argv and whether a failure is ignored (``-`` prefix)."""

    argv: tuple[str, ...]
    ignore_failure: bool = False


@dataclass(frozen=True)
class FleetOptions:
    """The [X-Fleet] section with specifiers expanded."""

    machine_id: str = ""
    machine_of: tuple[str, ...] = ()
    metadata: dict[str, tuple[str, ...]] = field(default_factory=dict)
    conflicts: tuple[str, ...] = ()
    is_global: bool = False
    replaces: tuple[str, ...] = ()


_NO_FLEET_OPTIONS = FleetOptions()


@dataclass(frozen=True)
class ServiceOptions:
    """The [Service] options the runner honours."""

    type: str = "simple"
    remain_after_exit: bool = False
    exec_start_pre: tuple[ExecCommand, ...] = ()
    exec_start: tuple[ExecCommand, ...] = ()
    exec_start_post: tuple[ExecCommand, ...] = ()
    exec_stop: tuple[ExecCommand, ...] = ()
    exec_stop_post: tuple[ExecCommand, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[tuple[str, bool], ...] = ()
    working_directory: str = ""
    user: str = ""
    restart: str = "no"
    restart_sec: float = 0.1
    timeout_start_sec: float = 90.0
    timeout_stop_sec: float = 90.0
    kill_signal: int = int(signal.SIGTERM)
    kill_mode: str = "control-group"
    pid_file: str = ""


@dataclass
class UnitFile:
    """A parsed unit file: its text, its sections in order, and typed views of them."""

    raw: str
    sections: dict[str, list[Option]]
    _fleet: dict[str, FleetOptions] = field(default_factory=dict, repr=False, compare=False)

    @property
    def hash(self) -> str:
        return unit_hash(self.raw)

    def values(self, section: str, key: str) -> list[str]:
        return [o.value for o in self.sections.get(section, []) if o.key == key]

    def value(self, section: str, key: str, default: str = "") -> str:
        found = self.values(section, key)
        return found[-1] if found else default

    def options(self, section: str, key: str) -> list[Option]:
        return [o for o in self.sections.get(section, []) if o.key == key]

    def fleet(self, name: str) -> FleetOptions:
        """The [X-Fleet] options of this unit when it runs as ``name`` (computed once per name)."""
        if "X-Fleet" not in self.sections:
            return _NO_FLEET_OPTIONS
        options = self._fleet.get(name)
        if options is None:
            options = self._fleet[name] = fleet_options(self, name)
        return options

    def service(self, name: str) -> ServiceOptions:
        """The [Service] options of this unit when it runs as ``name``."""
        return service_options(self, name)

    def description(self, name: str = "") -> str:
        """Description=, with specifiers expanded when the unit's ``name`` is given."""
        text = self.value("Unit", "Description")
        return expand_specifiers(text, name) if name else text


def unit_hash(raw: str) -> str:
    """The SHA-1 of the unit text: the ``unit/<hash>`` key, as fleet named it."""
    return hashlib.sha1(raw.encode()).hexdigest()


def parse(raw: str, name: str = "") -> UnitFile:
    """Parse systemd unit syntax; raises :class:`UnitFileError` with the line number."""
    sections: dict[str, list[Option]] = {}
    current: list[Option] | None = None
    lines = raw.split("\n")
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise UnitFileError(f"invalid section header {line!r}", number, name)
            title = line[1:-1]
            if any(c in title for c in "[]") or title != title.strip():
                raise UnitFileError(f"invalid section header {line!r}", number, name)
            current = sections.setdefault(title, [])
            continue
        if current is None:
            raise UnitFileError("assignment outside of a section", number, name)
        if "\x00" in line:
            raise UnitFileError("NUL byte in line", number, name)
        # A trailing backslash continues the value on the next line; comment lines in
        # between are skipped, as systemd does.
        while line.endswith("\\") and index < len(lines):
            following = lines[index].strip()
            index += 1
            if following[:1] in ("#", ";"):
                continue
            line = line[:-1] + " " + following
        if line.endswith("\\"):
            line = line[:-1]
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq:
            raise UnitFileError(f"missing '=' in {line[:60]!r}", number, name)
        if not key or not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise UnitFileError(f"invalid key {key[:60]!r}", number, name)
        current.append(Option(key, value.strip(), number))
    unit = UnitFile(raw, sections)
    _validate(unit, name)
    return unit


def _validate(unit: UnitFile, name: str) -> None:
    """Check the options we interpret, so a bad value is refused at submit, not at start."""
    check_name = name or "unit.service"

    def check(section: str, key: str, convert: object) -> None:
        for option in unit.options(section, key):
            try:
                convert(expand_specifiers(option.value, check_name))  # type: ignore[operator]
            except ValueError as error:
                raise UnitFileError(f"{key}=: {error}", option.line, name) from None

    def one_of(choices: tuple[str, ...]) -> object:
        def convert(value: str) -> None:
            if value not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")

        return convert

    check("Service", "Type", one_of(SERVICE_TYPES))
    check("Service", "Restart", one_of(RESTART_POLICIES))
    check("Service", "KillMode", one_of(KILL_MODES))
    check("Service", "KillSignal", parse_signal)
    check("Service", "RemainAfterExit", parse_bool)
    for key in ("RestartSec", "TimeoutStartSec", "TimeoutStopSec"):
        check("Service", key, parse_timespan)
    for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost"):
        check("Service", key, _exec_command)
    check("Service", "Environment", _environment)
    check("X-Fleet", "Global", parse_bool)
    check("X-Fleet", "MachineMetadata", _metadata_line)
    check("X-Fleet", "MachineID", _machine_id)
    for key in ("MachineOf", "Conflicts", "Replaces"):
        check("X-Fleet", key, split_words)
    for option in unit.options("X-Fleet", "MachineOf") + unit.options("X-Fleet", "Replaces"):
        for word in split_words(expand_specifiers(option.value, check_name)):
            try:
                validate_name(normalize_name(word))
            except UnitFileError as error:
                raise UnitFileError(f"{option.key}=: {error.reason}", option.line, name) from None
    starts = unit.options("Service", "ExecStart")
    kind = unit.value("Service", "Type", "simple")
    if kind in ("simple", "notify", "forking") and len([o for o in starts if o.value]) > 1:
        raise UnitFileError(f"Type={kind} takes one ExecStart=", starts[-1].line, name)
    if kind == "forking" and not unit.value("Service", "PIDFile", ""):
        types = unit.options("Service", "Type")
        raise UnitFileError(
            "Type=forking needs PIDFile= here: without cgroups, the PID file is how the "
            "daemon is found once it has detached",
            types[-1].line if types else 0,
            name,
        )
    if check_name.endswith(".service") and "Service" in unit.sections:
        if not any(o.value for o in starts) and not unit.values("Service", "ExecStop"):
            header = _section_line(unit.raw, "Service")
            raise UnitFileError("[Service] has neither ExecStart= nor ExecStop=", header, name)


def _section_line(raw: str, section: str) -> int:
    for number, line in enumerate(raw.split("\n"), 1):
        if line.strip() == f"[{section}]":
            return number
    return 0


def _machine_id(value: str) -> None:
    if value and (len(value) < 8 or not re.fullmatch(r"[0-9A-Za-z]+", value)):
        raise ValueError("expected a machine ID or a unique prefix of at least 8 characters")


def _metadata_line(value: str) -> list[tuple[str, str]]:
    pairs = []
    for word in split_words(value):
        key, eq, wanted = word.partition("=")
        if not eq or not key:
            raise ValueError(f"expected key=value, got {word!r}")
        pairs.append((key, wanted))
    return pairs


def _environment(value: str) -> list[tuple[str, str]]:
    pairs = []
    for word in split_words(value):
        key, eq, wanted = word.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"expected NAME=value, got {word!r}")
        pairs.append((key, wanted))
    return pairs


def _exec_command(value: str) -> ExecCommand | None:
    text = value.strip()
    ignore = False
    while text[:1] in ("-", "@", "+", "!"):
        ignore = ignore or text[0] == "-"
        text = text[1:]
    if not text:
        if value.strip():
            raise ValueError("command is missing after its prefix")
        return None
    argv = split_words(text)
    if not argv or not argv[0]:
        raise ValueError("empty command")
    return ExecCommand(tuple(argv), ignore)


def _commands(unit: UnitFile, key: str, name: str) -> tuple[ExecCommand, ...]:
    commands: list[ExecCommand] = []
    for value in unit.values("Service", key):
        # An empty assignment resets the list, as in systemd.
        command = _exec_command(expand_specifiers(value, name))
        if command is None:
            commands.clear()
        else:
            commands.append(command)
    return tuple(commands)


def service_options(unit: UnitFile, name: str) -> ServiceOptions:
    def get(key: str, default: str = "") -> str:
        return expand_specifiers(unit.value("Service", key, default), name)

    environment: list[tuple[str, str]] = []
    for value in unit.values("Service", "Environment"):
        environment.extend(_environment(expand_specifiers(value, name)))
    files: list[tuple[str, bool]] = []
    for value in unit.values("Service", "EnvironmentFile"):
        path = expand_specifiers(value, name).strip()
        files.append((path[1:], True) if path.startswith("-") else (path, False))
    kind = get("Type", "simple")
    timeout = get("TimeoutSec")
    return ServiceOptions(
        type=kind,
        remain_after_exit=parse_bool(get("RemainAfterExit", "no")),
        exec_start_pre=_commands(unit, "ExecStartPre", name),
        exec_start=_commands(unit, "ExecStart", name),
        exec_start_post=_commands(unit, "ExecStartPost", name),
        exec_stop=_commands(unit, "ExecStop", name),
        exec_stop_post=_commands(unit, "ExecStopPost", name),
        environment=tuple(environment),
        environment_files=tuple(files),
        working_directory=get("WorkingDirectory"),
        user=get("User"),
        restart=get("Restart", "no"),
        restart_sec=parse_timespan(get("RestartSec", "100ms")),
        timeout_start_sec=parse_timespan(get("TimeoutStartSec", timeout or "90s")),
        pid_file=get("PIDFile"),
        timeout_stop_sec=parse_timespan(get("TimeoutStopSec", timeout or "90s")),
        kill_signal=parse_signal(get("KillSignal", "SIGTERM")),
        kill_mode=get("KillMode", "control-group"),
    )


def fleet_options(unit: UnitFile, name: str) -> FleetOptions:
    def words(key: str) -> tuple[str, ...]:
        found: list[str] = []
        for value in unit.values("X-Fleet", key):
            found.extend(split_words(expand_specifiers(value, name)))
        return tuple(found)

    metadata: dict[str, list[str]] = {}
    for value in unit.values("X-Fleet", "MachineMetadata"):
        for key, wanted in _metadata_line(expand_specifiers(value, name)):
            metadata.setdefault(key, []).append(wanted)
    is_global = unit.value("X-Fleet", "Global", "false")
    return FleetOptions(
        machine_id=expand_specifiers(unit.value("X-Fleet", "MachineID"), name).strip(),
        machine_of=tuple(normalize_name(n) for n in words("MachineOf")),
        metadata={k: tuple(v) for k, v in metadata.items()},
        conflicts=words("Conflicts"),
        is_global=parse_bool(expand_specifiers(is_global, name)),
        replaces=tuple(normalize_name(n) for n in words("Replaces")),
    )
