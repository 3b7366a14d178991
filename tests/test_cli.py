"""The ``aiospaces`` and ``space`` command lines, run as real subprocesses.

Each test runs ``python -m aiospaces ...`` (or the ``space`` entry point) and
looks only at what a user sees: stdout, stderr, the exit status, the
``--json-status`` file, and ``/proc``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiospaces._cli import build_parser, enter_sandbox, run_sandbox, split_command
from aiospaces.sandbox import Bind, Proc, Tmpfs

ROOT = str(Path(__file__).resolve().parent.parent)
SPACE = "from aiospaces._space import main; raise SystemExit(main())"
# Mount only in a mount namespace of its own: a regression must not cover the host's /proc.
MOUNT_PROC = (
    f'[ "$(readlink /proc/self/ns/mnt)" != "{os.readlink("/proc/self/ns/mnt")}" ] || exit 99; '
    "mount -t proc proc /proc"
)
TRAP = 'trap "echo got; exit 7" TERM INT HUP; echo ready; while :; do sleep 0.05; done'

needs_ps = pytest.mark.skipif(shutil.which("ps") is None, reason="needs ps (procps)")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m aiospaces ARGS``, to completion."""
    return subprocess.run(
        [sys.executable, "-m", "aiospaces", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


def space(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The ``space`` console script's entry point, to completion."""
    return subprocess.run(
        [sys.executable, "-c", SPACE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiospaces", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("aiospaces: "), r.stderr
    return lines[0]


def processes(ps_output: str) -> dict[int, str]:
    """``{pid: command}`` from ``ps ax`` output."""
    out = {}
    for line in ps_output.splitlines()[1:]:
        fields = line.split(None, 4)
        out[int(fields[0])] = fields[4]
    return out


def wait_status_line(path: Path, proc: subprocess.Popen[str]) -> dict[str, int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return json.loads(path.read_text().splitlines()[0])  # type: ignore[no-any-return]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no --json-status line")


@pytest.fixture
def sandbox_running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """``aiospaces run`` with its own user/net/uts namespaces, sleeping; its status line."""
    status = tmp_path / "status.jsonl"
    proc = start(
        "run", "-U", "-r", "-n", "-u", "--hostname", "inner",
        "--json-status", str(status), "--", "sleep", "60",
    )  # fmt: skip
    try:
        yield proc, wait_status_line(status, proc)
    finally:
        proc.terminate()  # forwarded to sleep
        proc.communicate(timeout=30)


# -- the seed README's example: who is PID 1 ------------------------------------------


@needs_ps
@pytest.mark.userns
def test_as_pid_1_the_shell_is_pid_1() -> None:
    r = cli("run", "-U", "-r", "-p", "-m", "--as-pid-1", "--",
            "sh", "-c", f"{MOUNT_PROC}; ps ax")  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs = processes(r.stdout)
    assert len(procs) == 2, r.stdout
    assert procs[1].startswith("sh -c [ "), r.stdout
    assert any(cmd.startswith("ps ax") for cmd in procs.values())


@needs_ps
@pytest.mark.userns
def test_without_as_pid_1_an_init_is_pid_1_and_the_shell_pid_2() -> None:
    r = cli("run", "-U", "-r", "-p", "-m", "--",
            "sh", "-c", f"{MOUNT_PROC}; ps ax")  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs = processes(r.stdout)
    assert len(procs) == 3, r.stdout
    assert not procs[1].startswith("sh "), r.stdout
    assert procs[2].startswith("sh -c [ "), r.stdout


@pytest.mark.userns
def test_mount_namespace_from_flags_does_not_leak_mounts_to_the_host() -> None:
    # -m alone must make propagation private (as unshare -m does): a proc
    # mounted over /proc inside must not show up in our mount table.
    before = Path("/proc/self/mountinfo").read_text().count("\n")
    r = cli("run", "-U", "-r", "-p", "-m", "--", "sh", "-c", MOUNT_PROC)
    assert r.returncode == 0, r.stderr
    assert Path("/proc/self/mountinfo").read_text().count("\n") == before


@needs_ps
@pytest.mark.userns
def test_proc_and_ro_bind_flags_show_only_the_sandbox() -> None:
    script = "ps ax; touch /x 2>/dev/null || echo ro"
    r = cli("run", "-U", "-r", "-p", "--ro-bind", "/", "/", "--proc", "/proc",
            "--tmpfs", "/tmp", "--", "sh", "-c", script)  # fmt: skip
    assert r.returncode == 0, r.stderr
    procs = processes(r.stdout.rsplit("\n", 2)[0])
    assert set(procs) <= {1, 2, 3, 4}, r.stdout
    assert r.stdout.splitlines()[-1] == "ro"


# -- exit status ----------------------------------------------------------------------------


@pytest.mark.userns
@pytest.mark.parametrize("flags", [[], ["-U", "-r"], ["-U", "-r", "-p"]], ids=["none", "U", "Up"])
def test_exit_status_is_the_programs(flags: list[str]) -> None:
    assert cli("run", *flags, "--", "true").returncode == 0
    r = cli("run", *flags, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")


@pytest.mark.userns
@pytest.mark.parametrize("flags", [[], ["-U", "-r", "-p"]], ids=["none", "Up"])
def test_death_by_signal_is_128_plus_n(flags: list[str]) -> None:
    r = cli("run", *flags, "--", "sh", "-c", "kill -KILL $$")
    assert r.returncode == 128 + signal.SIGKILL, r.stderr
    assert r.stderr == ""


def test_program_not_found_is_127() -> None:
    r = cli("run", "--", "no-such-program-aiospaces")
    assert r.returncode == 127
    assert "no-such-program-aiospaces" in one_error_line(r)


def test_program_not_executable_is_126(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    r = cli("run", "--", str(script))
    assert r.returncode == 126
    assert "cannot execute" in one_error_line(r)


@pytest.mark.userns
def test_stdin_passes_through() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "aiospaces", "run", "-U", "-r", "-p", "--", "cat"],
        input="through\n", capture_output=True, text=True, timeout=60, env=_env(), check=False,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "through\n")


def test_timeout_kills_the_sandbox_and_exits_124(tmp_path: Path) -> None:
    status = tmp_path / "s.jsonl"
    t0 = time.monotonic()
    r = cli("run", "--timeout", "0.3", "--json-status", str(status), "--", "sleep", "30")
    assert r.returncode == 124
    assert time.monotonic() - t0 < 20
    assert "timed out" in one_error_line(r)
    assert json.loads(status.read_text().splitlines()[-1]) == {"exit-code": 124, "timeout": 0.3}


# -- errors: one line, 125; usage errors: argparse's 2 --------------------------------------


@pytest.mark.userns
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--uid-map", "0 x 1"], "uid_map"),
        (["--uid-map", "0 1000 1,0 1001 1"], "overlap"),
        (["-U", "--proc", "/proc"], "pid namespace"),
        (["--bind", "/no/such/dir/aiospaces", "/x", "-U", "-r"], "/no/such/dir/aiospaces"),
        (["--bind", "relative", "/x", "-U"], "absolute"),
        (["--hostname", "x" * 100], "hostname"),
        (["-U", "-r", "--uid", "5"], "not mapped"),
        (["-p", "--network", "host", "-n"], "host"),
    ],
    ids=["map", "overlap", "proc", "bind-src", "relative", "hostname", "uid", "network"],
)
def test_bad_values_are_one_line_and_125(args: list[str], words: str) -> None:
    r = cli("run", *args, "--", "true")
    assert r.returncode == 125, r.stderr
    assert words in one_error_line(r)
    assert r.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--bogus", "--", "true"],
        ["run"],
        ["run", "-U", "--"],
        ["run", "--network", "bogus", "--", "true"],
        ["run", "--timeout", "-1", "--", "true"],
        ["run", "--uid", "root", "--", "true"],
        ["enter", "--", "true"],
        ["enter", "notapid", "--", "true"],
        ["enter", "1"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert "usage:" in r.stderr


def test_enter_a_process_that_is_gone_is_125() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    r = cli("enter", str(p.pid), "--", "true")
    assert r.returncode == 125
    assert str(p.pid) in one_error_line(r)


@pytest.mark.unprivileged
def test_namespaces_without_a_user_namespace_say_how_to_run_unprivileged() -> None:
    r = cli("run", "-p", "--", "true")
    assert r.returncode == 125
    assert "-U -r" in one_error_line(r)


@pytest.mark.unprivileged
@pytest.mark.userns
def test_a_map_beyond_our_subordinate_range_is_one_line_and_125() -> None:
    r = cli("run", "-U", "--uid-map", "0 4000000000 1", "--", "true")
    assert r.returncode == 125
    assert "uid_map" in one_error_line(r)


def test_help_shows_examples() -> None:
    for args in (["--help"], ["run", "--help"], ["enter", "--help"]):
        r = cli(*args)
        assert r.returncode == 0
        assert "examples:" in r.stdout
    assert "--as-pid-1" in cli("run", "--help").stdout


# -- signals --------------------------------------------------------------------------------


@pytest.mark.userns
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize(
    "flags",
    [[], ["-U", "-r", "-p"], ["-U", "-r", "-p", "--as-pid-1"]],
    ids=["none", "init", "pid1"],
)
def test_signals_to_the_cli_reach_the_program(sig: int, flags: list[str]) -> None:
    proc = start("run", *flags, "--", "sh", "-c", TRAP)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (7, "got\n", "")


@pytest.mark.userns
def test_a_program_without_a_handler_dies_of_the_forwarded_signal() -> None:
    proc = start("run", "-U", "-r", "-p", "--", "sh", "-c", "echo ready; exec sleep 30")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM


# -- --json-status ----------------------------------------------------------------------------


@pytest.mark.userns
def test_json_status_has_the_pid_namespace_ids_and_exit_code(tmp_path: Path) -> None:
    status = tmp_path / "status.jsonl"
    r = cli("run", "-U", "-r", "-n", "-u", "--json-status", str(status), "--",
            "sh", "-c", "echo $$; readlink /proc/self/ns/net; sleep 0.3; exit 5")  # fmt: skip
    assert r.returncode == 5, r.stderr
    pid_inside, net = r.stdout.split()
    lines = [json.loads(line) for line in status.read_text().splitlines()]
    assert len(lines) == 2
    first, last = lines
    assert first["child-pid"] == int(pid_inside)  # no pid namespace: the same pid
    assert f"net:[{first['net-namespace']}]" == net
    assert first["net-namespace"] != int(os.readlink("/proc/self/ns/net")[5:-1])
    assert first["mnt-namespace"] == int(os.readlink("/proc/self/ns/mnt")[5:-1])
    assert set(first) >= {"user-namespace", "uts-namespace", "pid-namespace"}
    assert last == {"exit-code": 5}


@pytest.mark.userns
def test_json_status_after_a_signal_and_after_a_failure(tmp_path: Path) -> None:
    status = tmp_path / "status.jsonl"
    r = cli("run", "-U", "-r", "-p", "--json-status", str(status), "--",
            "sh", "-c", "sleep 0.2; kill -TERM $$")  # fmt: skip
    assert r.returncode == 128 + signal.SIGTERM
    assert json.loads(status.read_text().splitlines()[-1]) == {
        "exit-code": 128 + signal.SIGTERM,
        "signal": signal.SIGTERM,
    }
    r = cli("run", "--json-status", str(status), "--", "no-such-program-aiospaces")
    assert r.returncode == 127
    (line,) = status.read_text().splitlines()
    assert json.loads(line)["exit-code"] == 127


def test_json_status_file_that_cannot_be_opened_is_125(tmp_path: Path) -> None:
    r = cli("run", "--json-status", str(tmp_path / "no" / "dir"), "--", "true")
    assert r.returncode == 125
    assert "--json-status" in one_error_line(r)


# -- filesystem, ids, environment -------------------------------------------------------------


@pytest.mark.userns
def test_environment_options_apply_in_order() -> None:
    r = cli("run", "-U", "-r", "--clearenv", "--setenv", "A", "1", "--setenv", "B", "2",
            "--unsetenv", "B", "--", "/usr/bin/env")  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "A=1\n"), r.stderr
    r = cli("run", "--unsetenv", "HOME", "--setenv", "X", "y", "--", "sh", "-c",
            'echo "${HOME-unset} $X $PATH"')  # fmt: skip
    assert r.stdout == f"unset y {os.environ['PATH']}\n"


@pytest.mark.userns
def test_ids_hostname_and_chdir() -> None:
    r = cli("run", "-U", "-r", "--hostname", "box", "--chdir", "/tmp", "--",
            "sh", "-c", "id -u; id -g; hostname; pwd")  # fmt: skip
    assert (r.returncode, r.stdout.split()) == (0, ["0", "0", "box", "/tmp"]), r.stderr
    own = f"{os.getuid()}"
    r = cli("run", "--uid-map", f"7 {own} 1", "--gid-map", f"7 {os.getgid()} 1",
            "--", "sh", "-c", "id -u; id -g")  # fmt: skip
    assert (r.returncode, r.stdout.split()) == (0, ["7", "7"]), r.stderr


LOOPBACK = """
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
c = socket.socket()
try:
    c.connect(s.getsockname())
    print("up")
except OSError as e:
    print("down", e.errno)
"""


@pytest.mark.userns
def test_network_none_and_loopback() -> None:
    r = cli("run", "-U", "-r", "--network", "none", "--", sys.executable, "-c", LOOPBACK)
    assert r.stdout.split()[0] == "down", r.stderr
    r = cli("run", "-U", "-r", "-n", "--", sys.executable, "-c", LOOPBACK)
    assert r.stdout.split() == ["up"], r.stderr


@pytest.mark.userns
@pytest.mark.skipif(not os.path.islink("/bin"), reason="needs a merged-/usr host")
def test_root_starts_from_an_existing_tree(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "marker").write_text("inside\n")
    for name in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{name}"):
            (rootfs / name).symlink_to(os.readlink(f"/{name}"))
    r = cli("run", "-U", "-r", "--root", str(rootfs), "--ro-bind", "/usr", "/usr", "--",
            "/bin/sh", "-c", "cat /etc/marker; pwd; ls /")  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[:2] == ["inside", "/"]
    assert set(lines[2:]) == {"bin", "etc", "lib", "lib64", "sbin", "usr"} & {
        p.name for p in rootfs.iterdir()
    }


# -- enter ------------------------------------------------------------------------------------


def _own_ns(name: str) -> int:
    return int(os.readlink(f"/proc/self/ns/{name}").split("[")[1][:-1])


@pytest.mark.userns
def test_enter_joins_the_uts_and_net_namespaces(
    sandbox_running: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    _, status = sandbox_running
    pid = str(status["child-pid"])
    script = "hostname; readlink /proc/self/ns/net"
    for args in (
        ["enter", pid, "--user", "--net", "--uts", "--", "sh", "-c", script],
        ["enter", "--user", "--net", "--uts", pid, "--", "sh", "-c", script],
        ["enter", pid, "--", "sh", "-c", script],  # every namespace that differs
        ["enter", pid, "--all", "sh", "-c", script],
    ):
        r = cli(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.split() == ["inner", f"net:[{status['net-namespace']}]"], args
    assert status["net-namespace"] != _own_ns("net")


@pytest.mark.userns
def test_enter_only_what_is_asked(
    sandbox_running: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    _, status = sandbox_running
    r = cli("enter", str(status["child-pid"]), "--user", "--uts", "--",
            "sh", "-c", "hostname; readlink /proc/self/ns/net")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["inner", f"net:[{_own_ns('net')}]"]


@pytest.mark.userns
def test_enter_passes_exit_status_and_environment(
    sandbox_running: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    _, status = sandbox_running
    r = cli("enter", str(status["child-pid"]), "--setenv", "X", "42", "--chdir", "/tmp",
            "--", "sh", "-c", 'echo "$X $(pwd)"; exit 9')  # fmt: skip
    assert (r.returncode, r.stdout) == (9, "42 /tmp\n"), r.stderr


# -- space: pyspaces' command line -------------------------------------------------------------


@pytest.mark.userns
def test_space_execute_the_program_is_pid_1() -> None:
    r = space("execute", "--pid", "--fs", "--user", "-z", "sh", "-c", "echo $$; id -u")
    assert (r.returncode, r.stdout.split()) == (0, ["1", "0"]), r.stderr
    # the seed's map formats
    r = space("execute", "-p", "-U", "-M", f"0 {os.getuid()} 1", "-G", f"0 {os.getgid()} 1",
              "--", "sh", "-c", "echo $$; id -u; exit 3")  # fmt: skip
    assert (r.returncode, r.stdout.split()) == (3, ["1", "0"]), r.stderr


@pytest.mark.userns
def test_space_verbose_and_all() -> None:
    r = space("-v", "execute", "-a", "-z", "--", "hostname")
    assert r.returncode == 0, r.stderr
    # The program writes to the same stdout, maybe before the first line (as with pyspaces).
    lines = [line for line in r.stdout.splitlines() if line and line != socket.gethostname()]
    assert lines[0].startswith("PID of child created by clone() is "), r.stdout
    pid = lines[0].rsplit(" ", 1)[1]
    assert lines[-1] == f"Child returned: pid {pid}, status 0"


@pytest.mark.userns
def test_space_errors() -> None:
    r = space("execute", "-M", "0 0 1", "--", "true")  # a map without --user
    assert r.returncode == 125
    assert "--user" in one_error_line(r)
    r = space("execute", "-U", "-z", "--", "no-such-program-aiospaces")
    assert r.returncode == 127
    assert space("execute").returncode == 2


@pytest.mark.userns
def test_space_inject(sandbox_running: tuple[subprocess.Popen[str], dict[str, int]]) -> None:
    _, status = sandbox_running
    r = space("inject", "--all", str(status["child-pid"]), "hostname")
    assert (r.returncode, r.stdout) == (0, "inner\n"), r.stderr
    r = space("inject", "-U", "-u", "--proc", "/proc", str(status["child-pid"]), "hostname")
    assert (r.returncode, r.stdout) == (0, "inner\n"), r.stderr


def _copy_with_libs(program: str, rootfs: Path) -> None:
    """Copy ``program`` and the shared libraries ``ldd`` names into ``rootfs``."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    paths = [program]
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("/"):
                paths.append(word)
    for path in paths:
        dst = rootfs / path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), dst)


@pytest.mark.userns
@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
def test_space_chroot(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    _copy_with_libs(os.path.realpath("/bin/sh"), rootfs)
    sh = "/" + os.path.relpath(os.path.realpath("/bin/sh"), "/")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "marker").write_text("chrooted")
    r = space("chroot", "-z", "-p", str(rootfs), sh, "-c", "read x < /etc/marker; echo $x $$")
    assert (r.returncode, r.stdout) == (0, "chrooted 1\n"), r.stderr


# -- the option mapping (in process: no child) ------------------------------------------------


def _parse(*argv: str) -> object:
    options, _program, target = split_command(argv)
    args = build_parser().parse_args(options)
    args.target = int(target) if target else None
    return args


def test_split_command() -> None:
    assert split_command(["run", "-U", "--", "sh", "-c", "x"]) == (
        ["run", "-U"],
        ["sh", "-c", "x"],
        None,
    )
    assert split_command(["enter", "42", "--net", "--", "sh"]) == (["enter", "--net"], ["sh"], "42")
    assert split_command(["run", "-U", "sh", "--", "x"]) == (["run", "-U", "sh"], ["x"], None)
    assert split_command(["check", "--json"]) == (["check", "--json"], None, None)


def test_run_options_map_onto_the_sandbox() -> None:
    sb = run_sandbox(_parse("run", "-r", "-p", "--ro-bind", "/", "/", "--tmpfs", "/tmp",
                            "--proc", "/proc", "--hostname", "h", "--network", "none"))  # type: ignore[arg-type]  # fmt: skip
    assert sb.namespaces == {"user", "pid", "mnt", "uts", "net"}
    assert sb.mounts == (Bind("/", "/", readonly=True), Tmpfs("/tmp"), Proc("/proc"))
    assert sb.map_zero is True
    assert sb.network == "none"
    assert sb.hostname == "h"
    assert run_sandbox(_parse("run", "-a")).namespaces == {  # type: ignore[arg-type]
        "user", "pid", "mnt", "net", "uts", "ipc", "cgroup", "time"
    }  # fmt: skip


def test_enter_options_map_onto_the_sandbox() -> None:
    sb = enter_sandbox(_parse("enter", "42", "--net", "-u"))  # type: ignore[arg-type]
    assert (sb.enter, sb.join) == (42, {"net", "uts"})
    sb = enter_sandbox(_parse("enter", "42", "--all", "--net"))  # type: ignore[arg-type]
    assert sb.join is None


# -- limits and hardening ------------------------------------------------------------------------


@pytest.mark.userns
def test_rlimits_and_capabilities() -> None:
    r = cli("run", "-U", "-r", "--rlimit", "NOFILE=64", "--rlimit", "fsize=100000:200000",
            "--", "cat", "/proc/self/limits")  # fmt: skip
    assert r.returncode == 0, r.stderr
    limits = {line[:26].strip(): line[26:].split()[:2] for line in r.stdout.splitlines()[1:]}
    assert limits["Max open files"] == ["64", "64"]
    assert limits["Max file size"] == ["100000", "200000"]
    caps = "grep CapEff /proc/self/status"
    r = cli("run", "-U", "-r", "--", "sh", "-c", caps)  # as unshare: root inside keeps them
    assert int(r.stdout.split()[1], 16) != 0, r.stderr
    r = cli("run", "-U", "-r", "--cap-drop", "ALL", "--", "sh", "-c", caps)
    assert int(r.stdout.split()[1], 16) == 0, r.stderr
    r = cli("run", "-U", "-r", "--cap-drop", "ALL", "--cap-add", "CAP_NET_ADMIN", "--",
            "sh", "-c", caps)  # fmt: skip
    assert int(r.stdout.split()[1], 16) == 1 << 12, r.stderr


@pytest.mark.userns
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--rlimit", "BOGUS=1"], "BOGUS"),
        (["--cap-add", "CAP_NET_ADMIN"], "--cap-drop ALL"),
        (["--cap-drop", "ALL", "--cap-add", "CAP_BOGUS"], "CAP_BOGUS"),
        (["--memory", "lots"], "lots"),
    ],
)
def test_bad_limits_are_one_line_and_125(args: list[str], words: str) -> None:
    r = cli("run", "-U", "-r", *args, "--", "true")
    assert r.returncode == 125, r.stderr
    assert words in one_error_line(r)


@pytest.mark.parametrize(
    "args", [["--rlimit", "NOFILE"], ["--pids", "0"], ["--cpus", "x"], ["--cap-drop", "SOME"]]
)
def test_bad_limit_syntax_is_a_usage_error(args: list[str]) -> None:
    r = cli("run", *args, "--", "true")
    assert r.returncode == 2
    assert "usage:" in r.stderr


@pytest.mark.userns
def test_seccomp_no_network() -> None:
    pytest.importorskip("pyseccomp", reason="needs pyseccomp")
    code = "import socket; socket.socket()"
    r = cli("run", "-U", "-r", "--seccomp", "no-network", "--", sys.executable, "-c", code)
    assert r.returncode == 1
    assert "PermissionError" in r.stderr
