"""Constants shared by the chaos modules."""

from __future__ import annotations

from pathlib import Path

from transport.linearizability import CAS, DELETE, GET, PUT

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
START_TIMEOUT = 30.0  # seconds a (re)started peer has to say "serving"
STOP_GRACE = 10.0  # seconds a peer gets to stop after SIGTERM before SIGKILL
TICK = 0.05  # pacing of the fault thread's loop and of polls of another process's state
FINAL_CLIENT = "final"  # the `client` of the reads made after the run, in the history
LAUNCHER = Path(__file__).resolve().parents[2] / "launcher.py"
OP_WEIGHTS = {GET: 35, PUT: 25, CAS: 25, DELETE: 15}
