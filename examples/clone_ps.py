"""The old pyspaces README example: ``ps ax`` inside new user, pid and mount namespaces.

Run it as root or as any user (unprivileged user namespaces must be enabled)::

    python examples/clone_ps.py

Output: the shell is PID 1 and only its own processes are listed::

        PID TTY      STAT   TIME COMMAND
          1 ?        S+     0:00 sh -c mount -t proc proc /proc; ps ax; exit
          3 ?        R+     0:00 ps ax

(PID 2 was `mount`, already gone.)
"""

from __future__ import annotations

import os
import sys

from aiospaces._linux import mount
from aiospaces._linux.constants import MS_PRIVATE, MS_REC
from aiospaces.compat import Container

# `exit` after ps keeps ps from being exec'd in place of the shell (dash
# execs the last command of -c), so the shell stays visible as PID 1.
COMMAND = "mount -t proc proc /proc; ps ax; exit"


def ps() -> None:
    # The new mount namespace starts as a copy of ours: if "/" is shared, a
    # proc mount on /proc would propagate to the host. Make it private first.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    sys.stdout.flush()
    os.execvp("sh", ["sh", "-c", COMMAND])


def main() -> int:
    c = Container(target=ps, newuser=True, newpid=True, newns=True, map_zero=True)
    c.start()
    c.join()
    code = c.exitcode
    c.close()
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
