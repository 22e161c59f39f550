"""Constants shared by the chaos modules."""

from __future__ import annotations

from tests.chaos.linearizability import CAS, DELETE, GET, PUT

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TICK = 0.05  # pacing of the fault thread's loop and of polls of another process's state
FINAL_CLIENT = "final"  # the `client` of the reads made after the run, in the history
OP_WEIGHTS = {GET: 35, PUT: 25, CAS: 25, DELETE: 15}
