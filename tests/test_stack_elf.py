"""The capability scan on real ELF files, built with gcc during the test."""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from chipaudit.checks.stack import baseline, elf, packages, snapshot
from chipaudit.checks.stack.capabilities import CapabilityCheck, gained
from chipaudit.checks.stack.fingerprint import FingerprintCheck
from chipaudit.report.model import Severity

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (installed by .ci/run)")

NETWORKED = r"""
#include <netinet/in.h>
#include <sys/socket.h>
int phone_home(void) {
    struct sockaddr_in a = {0};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    return connect(s, (struct sockaddr *)&a, sizeof a);
}
"""
QUIET = r"""
const char *where(void) { return "/etc/chipaudit-test.conf"; }
int add(int a, int b) { return a + b; }
"""
# A kernel module's shape: relocatable, with the kernel functions it calls left undefined.
MODULE = r"""
extern int call_usermodehelper(const char *path, char **argv, char **envp, int wait);
extern void *filp_open(const char *name, int flags, unsigned short mode);
int init_module(void) {
    static char *argv[] = {"/bin/sh", 0};
    filp_open("/var/log/x", 1, 0);
    return call_usermodehelper(argv[0], argv, 0, 1);
}
"""
CURL_USER = r"""
extern void *curl_easy_init(void);
extern int curl_easy_perform(void *);
int fetch(void) { return curl_easy_perform(curl_easy_init()); }
"""


def gcc(tmp: Path, name: str, source: str, *flags: str) -> Path:
    src, out = tmp / f"{name}.c", tmp / name
    src.write_text(source)
    subprocess.run(["gcc", "-O1", "-o", str(out), str(src), *flags], check=True, capture_output=True)
    return out


def shared(tmp: Path, name: str, source: str, *flags: str) -> Path:
    return gcc(tmp, name, source, "-shared", "-fPIC", *flags)


def test_scan_sees_connect_in_one_library_and_nothing_in_the_other(tmp_path: Path) -> None:
    net = elf.scan(str(shared(tmp_path, "libnet.so", NETWORKED)))
    quiet = elf.scan(str(shared(tmp_path, "libquiet.so", QUIET)))
    assert net.error is None and quiet.error is None
    assert net.capabilities["networking"] == ["connect", "socket"]
    assert set(net.capabilities) == {"networking"}
    assert quiet.capabilities == {}
    assert quiet.paths == ["/etc/chipaudit-test.conf"]  # absolute paths it names outside the usual trees
    assert "libc.so.6" in net.needed and not net.kernel_module


def test_kernel_module_imports_are_kernel_capabilities_compressed_or_not(tmp_path: Path) -> None:
    module = gcc(tmp_path, "fake.ko", MODULE, "-c")
    scanned = elf.scan(str(module))
    assert scanned.kernel_module and scanned.error is None
    assert scanned.capabilities == {"process_creation": ["call_usermodehelper"], "file_writes": ["filp_open"]}
    xz = tmp_path / "fake.ko.xz"
    xz.write_bytes(lzma.compress(module.read_bytes(), format=lzma.FORMAT_XZ))
    assert elf.scan(str(xz)).capabilities == scanned.capabilities


def test_a_library_needing_libcurl_can_reach_the_network(tmp_path: Path) -> None:
    shared(tmp_path, "libcurl.so.4", "void *curl_easy_init(void){return 0;} int curl_easy_perform(void*p){return 0;}",
           "-Wl,-soname,libcurl.so.4")
    user = shared(tmp_path, "libfetch.so", CURL_USER, f"-L{tmp_path}", "-l:libcurl.so.4")
    scanned = elf.scan(str(user))
    assert scanned.capabilities["networking"] == ["curl_easy_init", "curl_easy_perform", "needs libcurl.so.4"]


def test_files_that_are_not_elf_are_reported_not_scanned(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a binary")
    truncated = tmp_path / "libcut.so"
    truncated.write_bytes(shared(tmp_path, "libfull.so", QUIET).read_bytes()[:200])
    for path in (text, truncated, tmp_path / "absent.so"):
        assert elf.scan(str(path)).error


def test_a_capability_new_since_the_baseline_is_a_real_finding(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packages, "STACK_DISTRIBUTIONS", ())  # the temp tree only, not torch
    tree = tmp_path / "vendor"
    tree.mkdir()
    shutil.copy(shared(tmp_path, "libquiet.so", QUIET), tree / "libdriver.so")
    trusted = snapshot.collect(None, include=[str(tree)])
    snapshot.scan_capabilities(trusted)
    saved = tmp_path / "baseline.json"
    baseline.save(saved, trusted)

    # The same file, rebuilt with networking: a changed library and a new capability.
    shutil.copy(shared(tmp_path, "libnet.so", NETWORKED), tree / "libdriver.so")
    now = snapshot.collect(None, include=[str(tree)])
    scans = snapshot.scan_capabilities(now)
    new = gained(baseline.load(saved), now, CapabilityCheck().finding)
    assert [(f.severity, f.evidence["capability"]) for f in new] == [(Severity.high, "networking")]
    assert new[0].evidence["path"] == str(tree / "libdriver.so") and not new[0].evidence["new_binary"]
    changed = baseline.diff(baseline.load(saved), now, FingerprintCheck().finding)
    assert [(f.severity, f.evidence["path"]) for f in changed] == [(Severity.high, str(tree / "libdriver.so"))]
    # Without a baseline the capability is evidence only.
    evidence = CapabilityCheck()._evidence(scans[str(tree / "libdriver.so")])
    assert evidence.severity is Severity.info and "networking" in evidence.title
