"""Provides the checks that records read from the store must pass before they are used.

The store is shared by every node and every console: a record in it may have been written
by anyone who can reach it. Each check returns the reason a value is refused, in a
sysadmin's words, or ``""`` when it is fine. A record that fails is kept and shown as
invalid (with the reason) but never scheduled onto, never dialled, never put on a command
line.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from clustertui.backend.fleet.unitfile import UnitFileError, validate_name

# What `clusterd node --machine-id` accepts and what it generates (uuid4 hex, fleet's 32
# hex digits): letters and digits, 8 to 64 of them.
MACHINE_ID_RE = re.compile(r"[0-9A-Za-z]{8,64}")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
METADATA_KEY_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,62})")
# Anything fleet's MachineMetadata=key=value can name, short of the separators (`,` `=`)
# and the characters a shell or a terminal would act on.
METADATA_VALUE_RE = re.compile(r"(?:[A-Za-z0-9_.:/@+%~-](?:[A-Za-z0-9_.:/@+%~ -]{0,253}"
                               r"[A-Za-z0-9_.:/@+%~-])?)?")  # fmt: skip
DATA_DIR_RE = re.compile(r"/[A-Za-z0-9_.:/@+%~ -]{0,4095}")
CURSOR_RE = re.compile(r"[A-Za-z0-9=;_.:-]{1,512}")
BACKEND_TYPE_RE = re.compile(r"[a-z0-9-]{1,32}")
MAX_METADATA = 64


def machine_id_problem(machine_id: str) -> str:
    if not MACHINE_ID_RE.fullmatch(machine_id):
        return "ID is not 8 to 64 letters and digits"
    return ""


def ip_problem(value: str, what: str = "PublicIP") -> str:
    """Why ``value`` is not a plain IP address ("" when it is); a zone (``%eth0``) is refused."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return f"{what} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return f"{what} is not an IP address"
    return ""


def hostname_problem(value: str) -> str:
    if value and not HOSTNAME_RE.fullmatch(value):
        return "Hostname is not a host name"
    return ""


def data_dir_problem(value: str) -> str:
    if value and (not DATA_DIR_RE.fullmatch(value) or "/../" in value + "/"):
        return "DataDir is not an absolute path of safe characters"
    return ""


def metadata_problem(metadata: dict[str, str]) -> str:
    if len(metadata) > MAX_METADATA:
        return f"Metadata has more than {MAX_METADATA} entries"
    for key, value in metadata.items():
        if not METADATA_KEY_RE.fullmatch(key):
            return "Metadata has a key with unsafe characters"
        if not METADATA_VALUE_RE.fullmatch(value):
            return "Metadata has a value with unsafe characters"
    return ""


def machine_problem(machine: Any, key_id: str = "") -> str:
    """Why a machine record (a :class:`~backend.fleet.registry.Machine`) must not be used.

    ``key_id`` is the ID in the record's key (``machines/<id>/object``); the record's own
    ``ID`` must agree with it.
    """
    problem = machine_id_problem(key_id or machine.id)
    if problem:
        return problem
    if key_id and machine.id != key_id:
        return "ID does not match its key"
    if machine.public_ip:
        problem = ip_problem(machine.public_ip)
        if problem:
            return problem
    return (
        hostname_problem(machine.hostname)
        or data_dir_problem(machine.data_dir)
        or metadata_problem(machine.metadata)
    )


def unit_name_problem(name: str) -> str:
    """systemd's rules for a unit name: [A-Za-z0-9:_.\\@-], a known suffix, no leading ``-``."""
    try:
        validate_name(name)
    except UnitFileError as error:
        return str(error)
    return ""


def cursor_problem(cursor: str) -> str:
    if not CURSOR_RE.fullmatch(cursor):
        return "the journal cursor has unsafe characters"
    return ""


def subnet_record_problem(value: Any) -> str:
    """Why a flannel ``subnets/…`` value must not be used: its PublicIP, its backend type."""
    if not isinstance(value, dict):
        return "the subnet record is not a JSON object"
    public_ip = value.get("PublicIP")
    if not isinstance(public_ip, str):
        return "PublicIP is not an IP address"
    problem = ip_problem(public_ip)
    if problem:
        return problem
    backend = value.get("BackendType", "")
    if backend and (not isinstance(backend, str) or not BACKEND_TYPE_RE.fullmatch(backend)):
        return "BackendType has unsafe characters"
    data = value.get("BackendData")
    if data is not None and not isinstance(data, dict):
        return "BackendData is not a JSON object"
    machine_id = data.get("MachineID") if isinstance(data, dict) else None
    if machine_id is not None and (
        not isinstance(machine_id, str) or machine_id_problem(machine_id)
    ):
        return "BackendData.MachineID is not 8 to 64 letters and digits"
    return ""
