"""Functions the spawner-mode candidates run.

Deliberately importing nothing: the spawner process imports a function's
module, and every page it holds is copied into each child it forks. Keep
worker functions in lean modules (docs/benchmarks.md shows the difference).
"""


def noop() -> None:
    pass


def identity(x: int) -> int:
    return x
