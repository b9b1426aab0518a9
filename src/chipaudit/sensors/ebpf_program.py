"""The bpftrace program of the eBPF sensor (sensors/ebpf.py), written for the kernel it runs on.

Every call is recorded when it returns, not when it is made: a sockaddr or a path in user memory
is read after the kernel has copied it, so a page not yet mapped (which a read at entry cannot
fault in) is read all the same, and the return value (a descriptor, an errno) comes with it. The
call's arguments are kept per thread between entry and return. Filters run in the kernel: only
processes outside the tool's network namespace are recorded, opens only when they write, a file
call once per process, call, path and outcome, and a socket-layer send once per socket and peer,
so that a process looping on one call cannot flood the log and drown what else it does.

Probes for system calls or tracepoints this kernel lacks (arm64 has no open, rename or mkdir) are
left out, so that one program serves every architecture.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

# str() and buf() lengths: bpftrace keeps strings on the 512-byte BPF stack and refuses more than
# 200 (bpftrace 0.17); a longer path is cut and says so.
PATH_MAX_BYTES = 200
SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
MMSG_MAX = 8  # messages of one sendmmsg whose addresses are read; the rest are seen at the socket layer
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# Flags of a call that opens for writing (asm-generic/fcntl.h), as strace.WRITE_FLAGS by name.
WRITE_MASK = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND
AT_FDCWD = -100
TCP_SYN_SENT = 2  # include/net/tcp_states.h
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
NS = "curtask->nsproxy->net_ns->ns.inum"
# A line is KIND|time|netns|pid|comm|call|ret, then the kind's own fields (a path, which may hold
# any character, always last). Kinds: E a network call, F a file call, S a first send at the socket
# layer, T a TCP SYN sent, N a change of network namespace (its netns is the one left), U an
# io_uring set up. R (ready) and Y (a sync marker) are the tracer's own.
FIELDS = {"E": 2, "F": 3, "S": 3, "T": 3, "N": 1, "U": 0}  # each kind's own fields, at least
SOCK_NS = "$sk->__sk_common.skc_net.net->ns.inum"
COMM = "buf(curtask->comm, 16)"
HEAD = "%llu|%u|%d|%rx"  # time, netns, pid, comm: every line after its kind letter and before its call
CAP_LEN = f"if ($len > {SOCKADDR_MAX}) {{ $len = {SOCKADDR_MAX}; }} if ($len < 0) {{ $len = 0; }}"

# (syscall, kind, saved arguments): kinds are socket (family, type, protocol), addr (fd, address,
# length), msg, mmsg, open (directory descriptor, path, flags), path (pairs of a directory
# descriptor, '' for none, and a path written).
CALLS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("socket", "socket", ("family", "type", "protocol")),
    ("socketpair", "socket", ("family", "type", "protocol")),
    ("connect", "addr", ("fd", "uservaddr", "addrlen")),
    ("bind", "addr", ("fd", "umyaddr", "addrlen")),
    ("sendto", "addr", ("fd", "addr", "addr_len")),
    ("sendmsg", "msg", ("fd", "msg")),
    ("sendmmsg", "mmsg", ("fd", "mmsg", "vlen")),
    ("open", "open", ("", "filename", "flags")),
    ("openat", "open", ("dfd", "filename", "flags")),
    ("openat2", "open", ("dfd", "filename", "how")),
    ("creat", "path", ("", "pathname")),
    ("truncate", "path", ("", "path")),
    ("unlink", "path", ("", "pathname")),
    ("unlinkat", "path", ("dfd", "pathname")),
    ("rmdir", "path", ("", "pathname")),
    ("mkdir", "path", ("", "pathname")),
    ("mkdirat", "path", ("dfd", "pathname")),
    ("mknod", "path", ("", "filename")),
    ("mknodat", "path", ("dfd", "filename")),
    ("rename", "path", ("", "oldname", "", "newname")),
    ("renameat", "path", ("olddfd", "oldname", "newdfd", "newname")),
    ("renameat2", "path", ("olddfd", "oldname", "newdfd", "newname")),
    ("link", "path", ("", "newname")),
    ("linkat", "path", ("newdfd", "newname")),
    ("symlink", "path", ("", "newname")),
    ("symlinkat", "path", ("newdfd", "newname")),
)
NS_CALLS = ("setns", "unshare")
CLONE_CALLS = ("clone", "clone3")


# The tracepoint groups the program probes.
GROUPS = ("syscalls", "sock", "sched")


def tracepoints() -> set[str] | None:
    """The tracepoints this kernel has ('syscalls:sys_enter_openat'), or None when tracefs cannot be
    read (bpftrace then says what is missing)."""
    for root in TRACEFS:
        if not (root / "events" / "syscalls").is_dir():
            continue
        found: set[str] = set()
        for group in GROUPS:
            with contextlib.suppress(OSError):
                found |= {f"{group}:{p.name}" for p in (root / "events" / group).iterdir()}
        return found
    return None


def event_list(tracepoints: set[str] | None) -> str | None:
    """tracefs's available_events as bpftrace needs it for this program: only the groups it probes.
    bpftrace 0.17 opens and reads the whole list (some 2,300 lines) about twenty times for every
    `args->` in the program, 2,500 times in all, and each close of that tracefs file costs about a
    millisecond: a third of the seconds it takes to attach. None where tracefs cannot be read."""
    if tracepoints is None:
        return None
    return "".join(f"{name}\n" for name in sorted(tracepoints))


def _exists(tracepoints: set[str] | None, name: str) -> bool:
    return tracepoints is None or name in tracepoints


def _file_line(code: int, head: str, common: str, flags: str, dfd: str, pointer: str) -> str:
    """A file call's line, written once per process, call, path and outcome: a process that opens one
    file in a loop must not flood the kernel's buffer and drown what else it does. `$ret` is the
    call's return value (_call_probes)."""
    key = f"@wrote[pid, {code}, $path, $ret < 0 ? 1 : 0]"
    return (f"$path = str({pointer}); if ({key} == 0) {{ {key} = 1;\n"
            f'    printf("F|{head}|%d|%d|%s\\n", {common}, {flags}, {dfd}, $path); }}')


def _call_probes(call: str, kind: str, saved: tuple[str, ...], code: int, toolns: int) -> str:
    enter_if = f"{NS} != {toolns}"
    if kind == "open" and call != "openat2":
        enter_if += f" && (args->flags & {WRITE_MASK})"
    if call == "sendto":
        enter_if += " && args->addr != 0"  # a send on a connected socket is seen at the socket layer
    save = " ".join(f"@a{i}[tid] = (int64)args->{field};" for i, field in enumerate(saved) if field)
    enter = f"tracepoint:syscalls:sys_enter_{call} /{enter_if}/ {{ @sc[tid] = {code}; {save} }}\n"
    head = f"{HEAD}|{call}|%d"
    # A file call's return value is read once into $ret: bpftrace 0.17 reads tracefs's
    # available_events some twenty times for each `args->` in the source, and each close of that
    # file costs about a millisecond (the audit's program: 3423 opens with a read per use, 2483 with
    # one per file probe). The other kinds read it where they print it: their buffers leave no room
    # on the 512-byte BPF stack for another variable (sendmsg's exceeds it).
    ret = "$ret" if kind in ("open", "path") else "args->ret"
    common = f"nsecs, {NS}, pid, {COMM}, {ret}"
    if kind == "socket":
        body = f'printf("E|{head}|%d|%d|%d\\n", {common}, @a0[tid], @a1[tid], @a2[tid]);'
    elif kind == "addr":
        body = (f"$len = @a2[tid]; {CAP_LEN}\n"
                f'  printf("E|{head}|%d|%rx\\n", {common}, @a0[tid], buf(@a1[tid], $len));')
    elif kind == "msg":
        body = ("$m = (struct user_msghdr *)@a1[tid];\n"
                f"  if ($m->msg_name != 0) {{ $len = $m->msg_namelen; {CAP_LEN}\n"
                f'    printf("E|{head}|%d|%rx\\n", {common}, @a0[tid], buf($m->msg_name, $len)); }}')
    elif kind == "mmsg":
        body = (f"$i = 0;\n  unroll({MMSG_MAX}) {{\n"
                "    if ($i < @a2[tid]) {\n"
                "      $h = (struct mmsghdr *)(@a1[tid] + $i * sizeof(struct mmsghdr));\n"
                f"      if ($h->msg_hdr.msg_name != 0) {{ $len = $h->msg_hdr.msg_namelen; {CAP_LEN}\n"
                f'        printf("E|{head}|%d|%rx\\n", {common}, @a0[tid], buf($h->msg_hdr.msg_name, $len)); }}\n'
                "    }\n    $i++;\n  }")
    elif kind == "open":
        dfd = "@a0[tid]" if saved[0] else str(AT_FDCWD)
        flags = "((struct open_how *)@a2[tid])->flags" if call == "openat2" else "@a2[tid]"
        body = (f"$flags = {flags};\n  if ($flags & {WRITE_MASK}) {{\n"
                f"    {_file_line(code, head, common, '$flags', dfd, '@a1[tid]')} }}")
    else:  # path: one line per path written, with the directory descriptor it is relative to
        body = "\n  ".join(_file_line(code, head, common, "0", f"@a{i}[tid]" if saved[i] else str(AT_FDCWD),
                                       f"@a{i + 1}[tid]") for i in range(0, len(saved), 2))
    clear = " ".join(f"delete(@a{i}[tid]);" for i, field in enumerate(saved) if field)
    read = "$ret = args->ret;\n  " if ret == "$ret" else ""
    exit_ = (f"tracepoint:syscalls:sys_exit_{call} /@sc[tid] == {code}/ {{\n  {read}{body}\n"
             f"  delete(@sc[tid]); {clear}\n}}\n")
    return enter + exit_


def program(toolns: int, toolpid: int, sync: int, available: set[str] | None) -> str:
    """The bpftrace program: only the probes this kernel has (`available`, from tracepoints()),
    recording processes outside `toolns`; the tool's process `toolpid` ending ends it, and its
    getpgid(`sync` + n) calls write the marker Y|n."""
    parts = ['BEGIN { printf("R|%llu\\n", nsecs); }\n',
             # The tool's own end ends the tracer, even when the tool is killed and cannot stop it.
             f"tracepoint:sched:sched_process_exit /tid == {toolpid}/ {{ exit(); }}\n",
             f"tracepoint:syscalls:sys_enter_getpgid /args->pid >= {sync} && {NS} == {toolns}/ "
             f'{{ printf("Y|%d\\n", args->pid - {sync}); }}\n']
    code = 0
    for call, kind, saved in CALLS:
        code += 1
        if _exists(available, f"syscalls:sys_enter_{call}"):
            parts.append(_call_probes(call, kind, saved, code, toolns))
    for call in NS_CALLS:
        code += 1
        if _exists(available, f"syscalls:sys_enter_{call}"):
            parts.append(
                f"tracepoint:syscalls:sys_enter_{call} /{NS} != {toolns}/ {{ @sc[tid] = {code}; @a0[tid] = {NS}; }}\n"
                f"tracepoint:syscalls:sys_exit_{call} /@sc[tid] == {code}/ {{\n"
                f'  if ({NS} != @a0[tid]) {{ printf("N|%llu|%u|%d|%rx|{call}|%d|%u\\n", nsecs, @a0[tid], pid, {COMM}, '
                f"args->ret, {NS}); }}\n  delete(@sc[tid]); delete(@a0[tid]);\n}}\n")
    parent_ns = "curtask->real_parent->nsproxy->net_ns->ns.inum"
    for call in CLONE_CALLS:
        if _exists(available, f"syscalls:sys_exit_{call}"):
            # In the new child, whose first return from clone is its own: a child born in another
            # namespace than its parent's.
            parts.append(f"tracepoint:syscalls:sys_exit_{call} /args->ret == 0 && {NS} != {parent_ns} && "
                         f"{parent_ns} != {toolns}/ {{\n"
                         f'  printf("N|%llu|%u|%d|%rx|{call}|0|%u\\n", nsecs, {parent_ns}, pid, {COMM}, {NS});\n}}\n')
    if _exists(available, "syscalls:sys_exit_io_uring_setup"):
        parts.append(f"tracepoint:syscalls:sys_exit_io_uring_setup /{NS} != {toolns}/ {{\n"
                     f'  printf("U|{HEAD}|io_uring_setup|%d\\n", nsecs, {NS}, pid, {COMM}, args->ret);\n}}\n')
    if _exists(available, "sock:sock_send_length"):
        parts.append(_send_probes(toolns))
    if _exists(available, "sock:inet_sock_set_state"):
        parts.append(
            f"tracepoint:sock:inet_sock_set_state /args->newstate == {TCP_SYN_SENT}/ {{\n"
            f"  $sk = (struct sock *)args->skaddr;\n  {_owner(toolns)}"
            f"    if (args->family == {AF_INET6}) {{ $peer = ntop(args->daddr_v6); }}\n"
            "    else { $peer = ntop(args->daddr); }\n"
            f'    printf("T|{HEAD}|connect|0|%d|%s|%d\\n", nsecs, $ns, pid, {COMM}, args->family, $peer, '
            "args->dport);\n  }\n}\n")
    parts.append("END { clear(@sc); clear(@a0); clear(@a1); clear(@a2); clear(@a3); clear(@sent); clear(@wrote); }\n")
    return "".join(parts)


def _owner(toolns: int) -> str:
    """The namespace a socket-layer record belongs to: the sending process's when it is watched (a
    socket made outside, then handed to or inherited by a watched process, is still its), else the
    socket's own (a socket in a watched namespace, used by a process outside it)."""
    return (f"$ns = {NS}; if ($ns == {toolns}) {{ $ns = {SOCK_NS}; }}\n"
            f"  if ($ns != {toolns}) {{\n")


def _send_probes(toolns: int) -> str:
    """Every send through the socket layer (sendmsg, write, io_uring alike): the first on each socket
    to each peer is written, with the connected peer read from the kernel's own socket. One probe per
    address layout, each within the BPF stack."""
    check = f"$sk = (struct sock *)args->sk;\n  {_owner(toolns)}"
    send = f'printf("S|{HEAD}|send|%d|%d|%d|'
    common = f"nsecs, $ns, pid, {COMM}, args->ret, args->family, args->protocol"
    return (
        f"tracepoint:sock:sock_send_length /args->family == {AF_UNIX}/ {{\n  {check}"
        "    $peer = ((struct unix_sock *)$sk)->peer; $ua = (struct unix_address *)0;\n"
        "    if ($peer != 0) { $ua = ((struct unix_sock *)$peer)->addr; }\n"
        "    if (@sent[(uint64)$sk, (uint64)$ua, (uint64)0] == 0) { @sent[(uint64)$sk, (uint64)$ua, (uint64)0] = 1;\n"
        "      $len = 0; if ($ua != 0) { $len = $ua->len; }\n"
        f"      {CAP_LEN}\n"
        f'      {send}%rx\\n", {common}, buf($ua->name, $len)); }}\n  }}\n}}\n'
        f"tracepoint:sock:sock_send_length /args->family == {AF_INET}/ {{\n  {check}"
        "    $port = (uint64)$sk->__sk_common.skc_dport; $port = (($port & 0xff) << 8) | ($port >> 8);\n"
        "    if (@sent[(uint64)$sk, (uint64)$sk->__sk_common.skc_daddr, (uint64)$port] == 0) {\n"
        "      @sent[(uint64)$sk, (uint64)$sk->__sk_common.skc_daddr, (uint64)$port] = 1;\n"
        f'      {send}%s:%d\\n", {common}, ntop($sk->__sk_common.skc_daddr), $port); }}\n  }}\n}}\n'
        f"tracepoint:sock:sock_send_length /args->family == {AF_INET6}/ {{\n  {check}"
        "    $port = (uint64)$sk->__sk_common.skc_dport; $port = (($port & 0xff) << 8) | ($port >> 8);\n"
        "    $d6 = $sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32; $key = ((uint64)$d6[0] << 32) | (uint64)$d6[3];\n"
        "    if (@sent[(uint64)$sk, $key, (uint64)$port] == 0) { @sent[(uint64)$sk, $key, (uint64)$port] = 1;\n"
        f'      {send}[%s]:%d\\n", {common}, ntop($sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8), $port); }}\n'
        "  }\n}\n"
        # Any other family (netlink, packet, ...): its first send per socket, without a peer.
        f"tracepoint:sock:sock_send_length /args->family != {AF_UNIX} && args->family != {AF_INET} && "
        f"args->family != {AF_INET6}/ {{\n  {check}"
        "    if (@sent[(uint64)$sk, (uint64)0, (uint64)0] == 0) { @sent[(uint64)$sk, (uint64)0, (uint64)0] = 1;\n"
        f'      {send}\\n", {common}); }}\n  }}\n}}\n')
