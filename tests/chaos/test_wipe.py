"""The wipe nemesis's rule: a follower's data may go only once no vote or entry of it is
needed (tests/chaos/wipe.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chaos.wipe import Wipe


def _status(peer: str, term: int, applied: int) -> dict[str, Any]:
    return {"id": peer, "role": "follower", "term": term, "applied_index": applied}


WIPE = Wipe("a:1", Path("/nonexistent"), term=5, last_index=100, give_up=0.0)


def test_wipe_is_safe_once_every_other_peer_has_its_term_and_its_entries() -> None:
    others = [_status("b:1", 5, 100), _status("c:1", 6, 140)]
    assert WIPE.why_not(others) is None and WIPE.safe_to_wipe(others)


@pytest.mark.parametrize(
    ("others", "reason"),
    [
        # b could still campaign in term 5, where a already voted: a's vote is needed.
        ([_status("b:1", 4, 100), _status("c:1", 5, 100)], "b:1 is at term 4 < 5"),
        # An entry a held might be committed with a's help and be missing on b.
        ([_status("b:1", 5, 99), _status("c:1", 5, 100)], "b:1 has applied 99 < 100"),
        ([{"id": "b:1", "role": "unreachable"}, _status("c:1", 5, 100)], "b:1 is not answering"),
    ],
)
def test_wipe_waits_while_a_vote_or_an_entry_of_the_peer_may_be_needed(
    others: list[dict[str, Any]], reason: str
) -> None:
    assert WIPE.why_not(others) == reason
    assert not WIPE.safe_to_wipe(others)
