"""The bench's probe of a server's CPU time (bench/probes.py) on real
processes: a service started with WORKERS=N is a supervisor and its
workers, and the probe must account for all of them."""

from __future__ import annotations

import subprocess
import sys

from bench.probes import cpu_seconds

# A child that spends CPU, says so, and exits when its stdin closes.
CHILD = """
import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("spent", flush=True)
sys.stdin.read()
"""

# A parent (a supervisor's shape) that starts CHILD, then reaps it on cue.
PARENT = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), child.pid, flush=True)
sys.stdin.readline()
child.stdin.close()
child.wait()
print("reaped", flush=True)
sys.stdin.readline()
"""


def test_cpu_time_counts_children_alive_and_reaped() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdin is not None
        assert parent.stdout is not None
        said, child_pid = parent.stdout.readline().split()
        assert said == "spent"
        with_child = cpu_seconds(parent.pid)
        assert with_child >= cpu_seconds(int(child_pid)) >= 0.2  # the child's time is in

        parent.stdin.write("reap\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "reaped"
        # A worker that exits mid-run leaves its time to its supervisor.
        assert cpu_seconds(parent.pid) >= with_child

        parent.stdin.write("end\n")
        parent.stdin.flush()
        assert parent.wait() == 0
