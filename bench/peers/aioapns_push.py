"""Push one notification to each device token of a file with aioapns, as its README shows
it: one `APNs` client with token auth, every send started at once (`asyncio.gather`), no
database. Run by bench/run.py's `peers` scenario in bench/peers/.venv (requirements.txt).

    python aioapns_push.py --url https://127.0.0.1:PORT --ca ca.pem --key AuthKey.p8 \
        --key-id K --team-id T --topic com.example.parent --tokens tokens.txt [--timeout 120]

Prints one JSON line at the end: sent (answered 200), failed (an error answer or an
exception), failed_reasons, unanswered (neither, when the timeout struck), seconds (from
just before the first send to the last answer, or to the timeout), finished.

Pointing aioapns at the fake: the host and port it connects to are the APNS_SERVER and
APNS_PORT attributes of its protocol class (aioapns/connection.py), so a subclass with the
fake's address replaces `pool.protocol_class`. The TLS context is the constructor's
`ssl_context`, trusting the fake's CA; it also offers ALPN h2, which aioapns' own default
context does not and which the fake (like any HTTP/2-over-TLS server that checks)
requires.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aioapns import APNs, NotificationRequest, PushType  # type: ignore[import-not-found]
from aioapns.connection import (  # type: ignore[import-not-found]
    APNsDevelopmentClientProtocol,
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="https://host:port of the APNs server")
    p.add_argument("--ca", required=True, help="CA file the server's certificate chains to")
    p.add_argument("--key", required=True, help="the .p8 provider key")
    p.add_argument("--key-id", required=True)
    p.add_argument("--team-id", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--tokens", required=True, help="device tokens, one per line")
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many s")
    args = p.parse_args()
    tokens = Path(args.tokens).read_text().split()
    result = asyncio.run(push_all(args, tokens))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # Whatever aioapns still holds (connections, requests never answered) is not waited on.
    os._exit(0)


async def push_all(args: argparse.Namespace, tokens: list[str]) -> dict[str, Any]:
    where = urlsplit(args.url)
    context = ssl.create_default_context(cafile=args.ca)
    context.set_alpn_protocols(["h2"])
    client = APNs(
        key=Path(args.key).read_text(),
        key_id=args.key_id,
        team_id=args.team_id,
        topic=args.topic,
        use_sandbox=True,
        ssl_context=context,
    )
    client.pool.protocol_class = type(
        "ServerProtocol",
        (APNsDevelopmentClientProtocol,),
        {"APNS_SERVER": where.hostname, "APNS_PORT": where.port or 443},
    )

    sent = 0
    reasons: Counter[str] = Counter()
    last_answer = time.perf_counter()

    async def send(token: str) -> None:
        nonlocal sent, last_answer
        request = NotificationRequest(
            device_token=token,
            message={
                "aps": {
                    "alert": {
                        "title": "Follow-up from Dr. Chen",
                        "body": "How is Maya's fever today? Reply here if anything changed.",
                    },
                    "sound": "default",
                },
                "type": "follow_up",
            },
            priority=10,
            push_type=PushType.ALERT,
            collapse_key=str(uuid.uuid4()),
        )
        try:
            result = await client.send_notification(request)
        except Exception as e:  # counted, as a caller of gather would
            reasons[type(e).__name__] += 1
        else:
            if result.is_successful:
                sent += 1
            else:
                reasons[f"{result.status} {result.description}"] += 1
        last_answer = time.perf_counter()

    t0 = time.perf_counter()
    finished = True
    try:
        await asyncio.wait_for(asyncio.gather(*(send(t) for t in tokens)), args.timeout)
    except TimeoutError:
        finished = False
    failed = sum(reasons.values())
    return {
        "client": "aioapns",
        "n": len(tokens),
        "sent": sent,
        "failed": failed,
        "failed_reasons": dict(reasons),
        "unanswered": len(tokens) - sent - failed,
        "seconds": (last_answer if finished else time.perf_counter()) - t0,
        "last_answer_s": last_answer - t0,
        "finished": finished,
    }


if __name__ == "__main__":
    main()
