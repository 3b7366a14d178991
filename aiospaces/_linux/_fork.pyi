def clone3(flags: int, exit_signal: int = ..., cgroup_fd: int = ..., /) -> tuple[int, int]: ...
def clone_legacy(flags: int, exit_signal: int = ..., /) -> tuple[int, int]: ...
def spawn_exec(
    flags: int,
    sxflags: int,
    chan: int,
    parent_end: int,
    candidates: tuple[bytes, ...] | list[bytes],
    argv: tuple[bytes, ...] | list[bytes],
    envp: list[bytes],
    cwd: bytes | None,
    dups: list[int],
    sources: list[int],
    keep: list[int],
    pass_fds: list[int],
    errs: tuple[tuple[bytes, bytes], ...],
    /,
) -> tuple[int, int, int, int]: ...
def release_region(region: int, size: int, /) -> None: ...
def execve_limited(
    candidates: tuple[bytes, ...],
    argv: tuple[bytes, ...],
    envp: list[bytes],
    rlimits: tuple[tuple[int, int, int], ...],
    /,
) -> int: ...
def serve(
    sock: int, maxmsg: int, spawner_pidfd: int, /
) -> tuple[bytes, bytes, list[int]] | None: ...
