"""What a driver binary can do, from what it imports: the capability scan.

A shared library reaches the network, starts programs, writes files or reads the clock through
functions it imports from other libraries (its undefined dynamic symbols, and its DT_NEEDED
libraries such as libcurl). A kernel module does the same through the kernel symbols it leaves
undefined. pyelftools locates the symbol tables; NumPy decodes them in bulk, since a framework
library exports some 10^5 symbols of which only the undefined ones matter here.

This is evidence for reviewers, not a verdict: an import says the code can, not that it does. It
cannot see capabilities reached without importing them: raw system calls, symbols resolved at run
time with dlsym(), or code that is downloaded or generated (JIT) after loading.
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile


@dataclass(frozen=True)
class Capability:
    name: str
    meaning: str
    symbols: frozenset[str]  # user-space imports (libc, POSIX)
    kernel_symbols: frozenset[str] = frozenset()  # imports of a kernel module
    prefixes: tuple[str, ...] = ()  # whole libraries' APIs, e.g. libcurl's curl_*
    needed: tuple[str, ...] = ()  # DT_NEEDED libraries that bring the capability with them


def _set(names: str) -> frozenset[str]:
    return frozenset(names.split())


# Symbol names from POSIX/glibc and the Linux kernel's exported API.
CAPABILITIES: tuple[Capability, ...] = (
    Capability(
        "networking", "opens network connections or resolves host names",
        _set("socket connect bind listen accept accept4 getaddrinfo gethostbyname gethostbyname_r gethostbyname2 "
             "gethostbyname2_r gethostbyaddr getnameinfo sendto recvfrom res_query res_search res_nquery "
             "res_nsearch __res_query __res_search"),
        _set("sock_create sock_create_kern __sock_create kernel_connect kernel_bind kernel_listen kernel_accept "
             "kernel_sendmsg kernel_recvmsg sock_sendmsg sock_recvmsg"),
        prefixes=("curl_",), needed=("libcurl",)),
    Capability(
        "process_creation", "starts other programs or processes",
        _set("fork vfork clone clone3 execve execv execvp execvpe execl execlp execle fexecve system popen "
             "posix_spawn posix_spawnp"),
        _set("call_usermodehelper call_usermodehelper_setup call_usermodehelper_exec kernel_execve")),
    Capability(
        "file_writes", "creates, changes, renames or removes files",
        _set("creat creat64 rename renameat renameat2 unlink unlinkat mkdir mkdirat rmdir truncate truncate64 "
             "ftruncate ftruncate64 link linkat symlink symlinkat chmod fchmod fchmodat chown fchown lchown "
             "mkstemp mkstemp64 mkstemps mkostemp mkostemps tmpfile tmpfile64 fwrite pwrite pwrite64 pwritev"),
        _set("filp_open kernel_write __kernel_write vfs_write vfs_unlink vfs_mkdir vfs_rename vfs_create")),
    Capability(
        "time", "reads the wall-clock date and time",
        _set("time gettimeofday clock_gettime localtime localtime_r gmtime gmtime_r mktime timegm strftime ftime"),
        _set("ktime_get_real ktime_get_real_ts64 ktime_get_real_seconds ktime_get_real_fast_ns do_gettimeofday "
             "getnstimeofday64 ktime_get_coarse_real_ts64 rtc_read_time rtc_time64_to_tm")),
    Capability(
        "location", "reads the time zone, locale or host identity, or calls a geolocation library",
        _set("tzset localtime localtime_r setlocale newlocale nl_langinfo gethostname uname getifaddrs "
             "if_nameindex gethostid"),
        prefixes=("geoclue_", "gps_"), needed=("libgeoclue", "libgps")),
)
# Absolute paths named in read-only data under these roots are listed as evidence: the places a
# library could write to outside its own tree and the kernel's virtual file systems.
WATCHED_PATH = re.compile(rb"(?<![\w./-])/(?:etc|home|root|var|tmp|run|boot|mnt|srv|media)/[\w.+@%-][\w./+@%-]{1,200}")
MAX_PATHS = 25
ET_REL = "ET_REL"
SHN_UNDEF = 0
_SYM64 = [("st_name", "u4"), ("st_info", "u1"), ("st_other", "u1"), ("st_shndx", "u2"), ("st_value", "u8"),
          ("st_size", "u8")]
_SYM32 = [("st_name", "u4"), ("st_value", "u4"), ("st_size", "u4"), ("st_info", "u1"), ("st_other", "u1"),
          ("st_shndx", "u2")]


@dataclass
class ElfScan:
    path: str
    kernel_module: bool = False
    needed: list[str] = field(default_factory=list)
    imports: int = 0
    capabilities: dict[str, list[str]] = field(default_factory=dict)  # capability -> what grants it
    paths: list[str] = field(default_factory=list)
    error: str | None = None  # why the file could not be scanned


def classify(imports: set[str], needed: list[str], kernel: bool) -> dict[str, list[str]]:
    found = {}
    for cap in CAPABILITIES:
        names = cap.kernel_symbols if kernel else cap.symbols
        hits = sorted(imports & names) + sorted(i for i in imports if i.startswith(cap.prefixes) and cap.prefixes)
        hits += [f"needs {lib}" for lib in needed if lib.startswith(cap.needed) and cap.needed]
        if hits:
            found[cap.name] = sorted(set(hits))
    return found


def _decompressed(path: str) -> IO[bytes]:
    if path.endswith(".xz"):
        return io.BytesIO(lzma.decompress(Path(path).read_bytes()))
    if path.endswith(".gz"):
        return io.BytesIO(gzip.decompress(Path(path).read_bytes()))
    if path.endswith(".zst"):
        tool = shutil.which("zstd")
        if tool is None:
            raise OSError("zstd-compressed, and no zstd tool to read it")
        return io.BytesIO(subprocess.run([tool, "-dc", path], capture_output=True, check=True, timeout=60).stdout)
    return open(path, "rb")


def _undefined(elf: ELFFile, section_name: str) -> set[str]:
    section = elf.get_section_by_name(section_name)
    if section is None or section["sh_entsize"] == 0:
        return set()
    order = "<" if elf.little_endian else ">"
    dtype = np.dtype([(n, order + t) for n, t in (_SYM64 if elf.elfclass == 64 else _SYM32)])
    symbols = np.frombuffer(section.data(), dtype=dtype, count=section["sh_size"] // section["sh_entsize"])
    offsets = symbols["st_name"][(symbols["st_shndx"] == SHN_UNDEF) & (symbols["st_name"] != 0)]
    strings = elf.get_section(section["sh_link"]).data()
    return {strings[o:strings.index(b"\0", o)].decode(errors="replace") for o in offsets.tolist()}


def _needed(elf: ELFFile) -> list[str]:
    dynamic = elf.get_section_by_name(".dynamic")
    if dynamic is None:
        return []
    return [tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]


def _paths(elf: ELFFile) -> list[str]:
    rodata = elf.get_section_by_name(".rodata")
    if rodata is None:
        return []
    found = sorted({m.decode(errors="replace") for m in WATCHED_PATH.findall(rodata.data())})
    return found[:MAX_PATHS]


def scan(path: str) -> ElfScan:
    result = ElfScan(path)
    try:
        with _decompressed(path) as stream:
            elf = ELFFile(stream)
            result.kernel_module = elf["e_type"] == ET_REL
            imports = _undefined(elf, ".symtab" if result.kernel_module else ".dynsym")
            result.needed = _needed(elf)
            result.imports = len(imports)
            result.capabilities = classify(imports, result.needed, result.kernel_module)
            result.paths = _paths(elf)
    except (OSError, ELFError, ValueError, subprocess.SubprocessError, lzma.LZMAError) as e:
        result.error = f"{type(e).__name__}: {e}"[:300]
    return result
