"""Where the test suite's time goes: per test, wall seconds and XLA backend compilation seconds.

A pytest plugin (each xdist worker appends one JSON line per test to ``$SUITE_PROFILE``) and a
summary by test file. Run from the repository root:

    SUITE_PROFILE=/tmp/profile.jsonl PYTHONPATH=benchmarks .venv/bin/python -m pytest -q -p suite_profile
    python benchmarks/suite_profile.py /tmp/profile.jsonl

Compilation is counted with JAX's monitoring events in the test's own process (notebook kernels and
subprocesses compile in theirs, so their time shows as wall time only).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

import pytest

_counts: dict[str, float] = defaultdict(float)
_programs: dict[str, float] = defaultdict(float)
"""Backend seconds per program name in the current test (those over :data:`NAMED` are recorded by name)."""
NAMED = 0.5


def _listener(name: str, duration: float, **kwargs: Any) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        _counts["compile_s"] += duration
        _counts["compiled"] += 1
        _programs[str(kwargs.get("fun_name", "?"))] += duration
    elif name == "/jax/compilation_cache/cache_retrieval_time_sec":
        _counts["read_back_s"] += duration
        _counts["read_back"] += 1


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("SUITE_PROFILE"):
        import jax

        jax.monitoring.register_event_duration_secs_listener(_listener)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # noqa: ANN201
    path = os.environ.get("SUITE_PROFILE")
    _counts.clear()
    _programs.clear()
    start = time.perf_counter()
    yield
    if path:
        named = {k: round(v, 2) for k, v in sorted(_programs.items(), key=lambda kv: -kv[1]) if v > NAMED}
        row = {"test": item.nodeid, "wall_s": time.perf_counter() - start, **_counts, "programs": named}
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")


def summary(path: str) -> None:
    """Per test file: tests, wall seconds, backend compile seconds and programs compiled/read back; then the
    programs that compiled longest, by name."""
    files: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in open(path):
        row = json.loads(line)
        f = files[row["test"].split("::")[0]]
        f["tests"] += 1
        for key in ("wall_s", "compile_s", "compiled", "read_back", "read_back_s"):
            f[key] += row.get(key, 0.0)
    total = defaultdict(float)
    print(f"{'file':34s} {'tests':>5s} {'wall s':>8s} {'compile s':>9s} {'compiled':>8s} {'read back':>9s}")
    for name, f in sorted(files.items(), key=lambda kv: -kv[1]["wall_s"]):
        print(f"{name:34s} {f['tests']:5.0f} {f['wall_s']:8.1f} {f['compile_s']:9.1f} {f['compiled']:8.0f} {f['read_back']:9.0f}")
        for key, value in f.items():
            total[key] += value
    print(f"{'all':34s} {total['tests']:5.0f} {total['wall_s']:8.1f} {total['compile_s']:9.1f} {total['compiled']:8.0f}"
          f" {total['read_back']:9.0f}")
    programs: dict[str, list[float]] = defaultdict(list)
    for line in open(path):
        for name, seconds in json.loads(line).get("programs", {}).items():
            programs[name].append(seconds)
    print(f"\nprograms compiling over {NAMED} s (backend seconds, summed over tests):")
    for name, seconds in sorted(programs.items(), key=lambda kv: -sum(kv[1]))[:15]:
        print(f"{name:50s} {len(seconds):4d} x {sum(seconds):7.1f} s")


if __name__ == "__main__":
    summary(sys.argv[1])
