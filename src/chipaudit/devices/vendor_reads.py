"""Reads of vendor management libraries: live, recorded, or answered from a recording (after CHIPSEC's helpers).

Every read of a vendor management library (NVML, amdsmi) goes through a `Reader`. The live reader
calls the vendor's Python binding and turns what it returns (ctypes structures, bytes, enums,
tuples) into plain JSON data, so that the parsers in nvml.py and amdsmi.py only ever see plain data.
A `RecordingReader` keeps every answer, errors included; a `ReplayReader` answers from such a
recording. The parsers are therefore tested against recorded responses of devices this machine does
not have, and a user can record their own device (`record()`) to file a reproducible bug.

Calls are named by function and symbolic arguments: `nvmlDeviceGetClockInfo(NVML_CLOCK_SM)` or
`amdsmi_get_clock_info(AmdSmiClkType.GFX)`. The live reader resolves those names in the binding, so
a recording reads the same on every machine and every binding version.
"""

from __future__ import annotations

import ctypes
import enum
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

RECORDING_SCHEMA = "chipaudit.vendor-recording/1"
# A recorded call that failed: the library's own error name, e.g. NVML_ERROR_NOT_SUPPORTED.
ERROR_KEY = "__error__"
# Asked for a call the recording does not hold.
NOT_RECORDED = "NOT_RECORDED"
# The installed binding has no such function (an older or newer API).
NO_SUCH_FUNCTION = "FUNCTION_NOT_IN_BINDING"
NO_SUCH_CONSTANT = "CONSTANT_NOT_IN_BINDING"


class Unavailable(Exception):
    """The vendor library cannot be used here; the message says why (shown as 'not available')."""


class ReadError(Exception):
    """One read failed; `code` is the library's error name (NVML_ERROR_NOT_SUPPORTED, ...)."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def call_key(function: str, args: Sequence[str] = ()) -> str:
    return f"{function}({', '.join(args)})" if args else function


class Reader(Protocol):
    source: str

    def device_count(self) -> int: ...

    def read(self, function: str, *args: str, device: int | None = None) -> Any: ...


def plain(value: Any) -> Any:
    """A binding's return value as JSON data: structures become dicts of their fields."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, ctypes.Structure | ctypes.Union):
        return {name: plain(getattr(value, name)) for name, *_ in value._fields_}
    if isinstance(value, ctypes.Array):
        return [plain(v) for v in value]
    if isinstance(value, ctypes._SimpleCData):
        return plain(value.value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if type(value).__name__ == "nvmlFriendlyObject":  # pynvml's process lists: a structure's fields as attributes
        return plain(vars(value))
    return str(value)


class LiveReader:
    """Reads through a vendor binding; handles are the library's device handles, by index."""

    def __init__(
        self, source: str, module: ModuleType, handles: Sequence[Any], error_type: type[BaseException],
        error_code: Callable[[BaseException], str], close: Callable[[], Any] | None = None,
    ):
        self.source, self.module, self.handles = source, module, list(handles)
        self.error_type, self.error_code, self._close = error_type, error_code, close

    def device_count(self) -> int:
        return len(self.handles)

    def _constant(self, name: str) -> Any:
        value: Any = self.module
        for part in name.split("."):
            value = getattr(value, part) if not isinstance(value, enum.EnumMeta) else value[part]
        return value

    def read(self, function: str, *args: str, device: int | None = None) -> Any:
        fn = getattr(self.module, function, None)
        if fn is None:
            raise ReadError(NO_SUCH_FUNCTION)
        try:
            call_args = [self._constant(a) for a in args]
        except (AttributeError, KeyError) as e:
            raise ReadError(NO_SUCH_CONSTANT) from e
        if device is not None:
            call_args.insert(0, self.handles[device])
        try:
            return plain(fn(*call_args))
        except self.error_type as e:
            raise ReadError(self.error_code(e)) from e

    def close(self) -> None:
        if self._close is not None:
            self._close()


class RecordingReader:
    """Passes reads through and keeps every answer, for `ReplayReader` to give back later."""

    def __init__(self, inner: Reader, description: str = ""):
        self.inner, self.source = inner, inner.source
        self.system: dict[str, Any] = {}
        self.devices: list[dict[str, Any]] = [{} for _ in range(inner.device_count())]
        self.description = description

    def device_count(self) -> int:
        return self.inner.device_count()

    def read(self, function: str, *args: str, device: int | None = None) -> Any:
        store = self.system if device is None else self.devices[device]
        try:
            value = self.inner.read(function, *args, device=device)
        except ReadError as e:
            store[call_key(function, args)] = {ERROR_KEY: e.code}
            raise
        store[call_key(function, args)] = value
        return value

    def recording(self) -> dict[str, Any]:
        return {"schema": RECORDING_SCHEMA, "source": self.source, "description": self.description,
                "system": self.system, "devices": self.devices}


class ReplayReader:
    """Answers reads from a recording, errors included, exactly as the library gave them."""

    def __init__(self, recording: dict[str, Any]):
        if recording.get("schema") != RECORDING_SCHEMA:
            raise ValueError(f"not a vendor recording (schema {recording.get('schema')!r})")
        self.source = str(recording["source"])
        self.system: dict[str, Any] = recording.get("system", {})
        self.devices: list[dict[str, Any]] = recording.get("devices", [])

    @classmethod
    def from_file(cls, path: Path) -> ReplayReader:
        return cls(json.loads(Path(path).read_text()))

    def device_count(self) -> int:
        return len(self.devices)

    def read(self, function: str, *args: str, device: int | None = None) -> Any:
        store = self.system if device is None else self.devices[device]
        key = call_key(function, args)
        if key not in store:
            raise ReadError(NOT_RECORDED)
        value = store[key]
        if isinstance(value, dict) and ERROR_KEY in value:
            raise ReadError(str(value[ERROR_KEY]))
        return value


class Fields:
    """Reads of one device that may each fail; a failed read is kept as the reason, never raised.

    A device report then says, for every field it lacks, what the library answered instead.
    """

    def __init__(self, reader: Reader, device: int | None = None):
        self.reader, self.device = reader, device
        self.unavailable: dict[str, str] = {}

    def get(self, field: str, function: str, *args: str) -> Any:
        try:
            return self.reader.read(function, *args, device=self.device)
        except ReadError as e:
            self.unavailable[field] = f"{call_key(function, args)}: {e.code}"
            return None
