"""The supervision examples, run as scripts (as a user would), output checked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run_example(name: str, *args: str, timeout: float = 90) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.userns
def test_sandbox_pool_example() -> None:
    out = run_example("sandbox_pool.py", "--count", "30", "--timeout", "1", "--size", "6")
    rows = dict(re.findall(r"^(\S+)\s+(ok|error|timeout|killed)\s", out, re.M))
    assert rows["sum"] == "ok"
    assert rows["error"] == "error"
    assert rows["loop"] == "timeout"
    assert rows["sleep"] == "timeout"
    assert rows["memory"] == "error"  # RLIMIT_AS: MemoryError
    assert rows["segfault"] == "killed"
    assert rows["shadow"] == "error"
    assert rows["network"] == "error"
    assert re.search(r"^total\s+30 in", out, re.M)
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(ok|error|timeout|killed)\s+(\d+)", out, re.M)}
    assert sum(counts.values()) == 30
    assert counts["timeout"] == 6


@pytest.mark.userns
def test_supervised_workers_example() -> None:
    out = run_example("supervised_workers.py", "--duration", "2", "--crash-every", "0.3")
    events = re.findall(r"^\s*[\d.]+s\s+(\w+)\s+(\w+)", out, re.M)
    started = [n for n, k in events if k == "Started"]
    assert {"steady", "ticker", "flaky"} <= set(started)
    assert started.count("flaky") >= 3  # crashed and restarted
    assert ("flaky", "Restarting") in events
    assert [n for n, k in events if k == "Stopped"].count("ticker") == 1
    assert re.search(r"ticker\s+Exited\s+returncode=-9", out)  # ignored SIGTERM
    assert re.search(r"steady\s+Exited\s+returncode=143", out)  # PID 1, SIGTERM
    assert "done in" in out


@pytest.mark.userns
def test_async_service_example() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "async_service.py"), "--timeout", "1", "--size", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()  # type: ignore[union-attr]
        port = int(line.rsplit(":", 1)[1])
        requests = [
            {"id": 1, "code": "print(6 * 7)"},
            {"id": 2, "code": "while True: pass"},
            {"id": 3, "code": f"import os, signal; os.kill({proc.pid}, signal.SIGKILL)"},
            {"id": 4, "code": "print(open('/etc/shadow').read())"},
            {"id": 5, "code": "import os, signal; os.kill(0, signal.SIGKILL)"},
            {"id": 6, "code": "import os; print(os.getpid())"},
            {"id": 7, "code": "raise SystemExit(5)"},
        ]
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            f = sock.makefile("rwb")
            for req in requests:
                f.write(json.dumps(req).encode() + b"\n")
            f.write(b"{not json\n")
            f.flush()
            answers = [json.loads(f.readline()) for _ in range(len(requests) + 1)]
            by_id = {a["id"]: a for a in answers}
            assert by_id[1]["status"] == "ok"
            assert by_id[1]["stdout"] == "42\n"
            assert by_id[2]["status"] == "timeout"
            assert by_id[3]["status"] == "error"  # not visible from the sandbox
            assert "ProcessLookupError" in by_id[3]["stderr"]
            assert by_id[4]["status"] == "error"
            assert "/etc/shadow" in by_id[4]["stderr"]
            assert by_id[5]["status"] == "killed"  # only its own sandbox
            assert by_id[6]["stdout"].strip() == "2"  # pid 1 is our runner
            assert by_id[7] == {"id": 7, "status": "error", "returncode": 5,
                                "stdout": "", "stderr": ""}  # fmt: skip
            assert by_id[None]["status"] == "bad-request"
            # still serving, on the same connection
            f.write(b'{"id": 8, "code": "print(1)"}\n')
            f.flush()
            assert json.loads(f.readline())["stdout"] == "1\n"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in out
