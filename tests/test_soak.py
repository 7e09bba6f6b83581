"""A short run of the fault soak (tests/soak.py): overlapping `send-due` processes killed
and stopped at random, storms and dropped connections on the fake APNs and FCM, the
database terminating every connection, the app inserting and cancelling meanwhile; then
every follow-up is checked (exactly once, no push after the cancel window, in order,
repeats only after crashes).

The seed is printed; FOLLOWUPS_SOAK_SEED=<seed> replays it (timing still varies), as does
`python -m tests.soak --seed <seed>`, which also runs longer (`make soak`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.helpers import drop_pg_database, new_pg_database, pg_url
from tests.soak import SoakConfig, run_soak

# Read at import: the autouse fixture of conftest.py clears FOLLOWUPS_* before each test.
SEED = os.environ.get("FOLLOWUPS_SOAK_SEED", "").strip()


@pytest.fixture
def soak_db_url(pg_template: str) -> Iterator[str]:
    name = new_pg_database(pg_template)
    yield pg_url(name)
    drop_pg_database(name)


@pytest.mark.postgres
@pytest.mark.slow
def test_soak(soak_db_url: str) -> None:
    """About 55 s of faults and a drain of at most 40 s; every invariant holds."""
    seed = int(SEED) if SEED else random.SystemRandom().randrange(1, 10**9)
    print(f"soak seed {seed} (replay: FOLLOWUPS_SOAK_SEED={seed})", flush=True)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    result = run_soak(
        SoakConfig(seed=seed, seconds=55, drain_seconds=40, database_url=soak_db_url, out=out)
    )
    assert result.ok, "\n".join(
        [f"soak seed {seed}: replay with FOLLOWUPS_SOAK_SEED={seed}", *result.failures]
    )
