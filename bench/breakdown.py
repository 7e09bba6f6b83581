"""Where a send-due run's CPU goes, by stage, from py-spy's raw collapsed stacks.

    python bench/breakdown.py profile.txt [--deliveries N] [--cpu-seconds S]

Each sample is given to the first stage, from the leaf up, whose marker matches one of
its frames, so that a psycopg call made by the finish counts for the finish, and JSON
encoding done by the payload code counts for the payload. Samples of idle worker threads
(a thread pool's `work_queue.get`, which py-spy cannot always tell from work) are left
out. With --cpu-seconds (the run's user+sys, measured without the profiler) and
--deliveries, each stage is also given in ms of CPU per delivery.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# (stage, markers): a frame matches when it contains one of the markers. Checked from
# the leaf up; within one frame, in this order.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up (imports, settings, connect)", ("importlib", "idle.py", "<module>")),
    ("claim (SQL and rows)", ("claim_due", "delivery/run.py:Run.claim", "Run.claim ")),
    ("cancel gate", ("delivery/gate.py",)),
    (
        "finish: SQL (driver, SQLAlchemy)",
        ("psycopg/", "sqlalchemy/", "db.py"),
    ),
    ("finish: Python (groups, rows)", ("delivery/finish.py", "delivery/decisions.py")),
    (
        "payload and headers",
        ("push/payload.py", "push/apns/message.py", "push/fcm/message.py", "build ("),
    ),
    ("provider token (JWT)", ("provider_token", "jwt/")),
    ("answer handling (verdict, attempts, retries)", ("push/service.py", "backoff/", "judge")),
    ("HTTP/2 framing (the client, hpack)", ("h2/", "hpack/", "hyperframe/", "h2client.py")),
    ("TLS", ("ssl.py", "_ssl")),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py")),
    ("delivery service (plan, chains, round)", ("followup_cli/delivery/",)),
    ("the command (CLI, settings, alerts, run record)", ("followup_cli/",)),
)
IDLE = ("thread.py:81", "thread.py:85")


def stage_of(frames: list[str]) -> str:
    """The stage of one sample's stack (root first, leaf last). The root frame is the
    script's own `<module>`, under which everything runs: it marks no stage."""
    for depth in range(len(frames) - 1, 0, -1):
        frame = frames[depth]
        for stage, markers in STAGES:
            if any(marker in frame for marker in markers):
                # SQL under the claim is the claim's, SQL under the finish the finish's:
                # decided by the nearest project frame above the driver.
                if stage.startswith("finish: SQL"):
                    return _sql_owner(frames)
                return stage
    return "other"


def _sql_owner(frames: list[str]) -> str:
    for frame in reversed(frames[1:]):
        if "claim_due" in frame or "Run.claim" in frame:
            return "claim (SQL and rows)"
        if "delivery/gate.py" in frame:
            return "cancel gate"
        if "<module>" in frame or "idle.py" in frame or "migrate" in frame:
            return "start-up (imports, settings, connect)"
        if "followup_cli/" in frame and "db.py" not in frame:
            break
    return "finish: SQL (driver, SQLAlchemy)"


def breakdown(raw: Path) -> tuple[Counter[str], int]:
    """Samples per stage, and the samples counted (idle workers left out)."""
    stages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in IDLE):
            continue
        count = int(count_s)
        stages[stage_of(frames)] += count
        total += count
    return stages, total


def render(raw: Path, deliveries: int | None, cpu_seconds: float | None) -> str:
    stages, total = breakdown(raw)
    if not total:
        return "breakdown: no samples"
    per = cpu_seconds * 1000 / deliveries if cpu_seconds and deliveries else None
    lines = ["| stage | share of client CPU |" + (" ms per delivery |" if per else "")]
    lines.append("| --- | ---: |" + (" ---: |" if per else ""))
    for stage, count in stages.most_common():
        share = count / total
        row = f"| {stage} | {100 * share:.1f}% |"
        if per:
            row += f" {share * per:.3f} |"
        lines.append(row)
    if per:
        lines.append(f"| **all** | 100% | {per:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--deliveries", type=int)
    parser.add_argument("--cpu-seconds", type=float)
    args = parser.parse_args()
    print(render(args.raw, args.deliveries, args.cpu_seconds))


if __name__ == "__main__":
    main()
