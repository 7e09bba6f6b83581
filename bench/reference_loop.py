"""The original design's delivery loop, reproduced faithfully so it can be timed.

Sequential; 100 rows per batch; for each row one pyapns-client ``APNSClient.push()``
(as shipped: keep-alive disabled, so a new TLS + HTTP/2 connection per push, and the
library's own retry loop), then ``UPDATE ... SET status='sent', sent_at=NOW()`` and
``INSERT INTO follow_up_messages ...``, each its own autocommit statement. The only
differences from the design: no sleep between batches (so it can be timed), and the
client's base URL / trust root point at the fake APNs instead of Apple.

    python bench/reference_loop.py --database-url postgresql://... --apns-url https://...
        --ca-file ca.pem --key-file AuthKey.p8 --key-id K --team-id T --topic com.example

Prints one JSON line: {"delivered": n, "pushed": n, "push_errors": n, "seconds": s}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
import warnings

import psycopg
from psycopg.rows import dict_row
from pyapns_client import APNSClient, IOSNotification, IOSPayload, IOSPayloadAlert
from pyapns_client import exceptions as apns_exc

BATCH = 100


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", required=True, help="libpq URL (postgresql://...)")
    p.add_argument("--apns-url", required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--key-file", required=True)
    p.add_argument("--key-id", required=True)
    p.add_argument("--team-id", required=True)
    p.add_argument("--topic", required=True)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # httpx: verify=<str>, data=<bytes>

    client = APNSClient(
        mode=APNSClient.MODE_PROD,
        root_cert_path=args.ca_file,
        auth_key_path=args.key_file,
        auth_key_id=args.key_id,
        team_id=args.team_id,
    )
    client._base_url = args.apns_url.rstrip("/")  # the fake instead of api.push.apple.com

    started = time.perf_counter()
    delivered = pushed = errors = 0
    with psycopg.connect(args.database_url, autocommit=True, row_factory=dict_row) as conn:
        while True:
            rows = conn.execute(
                "SELECT * FROM follow_up_requests WHERE status = 'scheduled' "
                "AND scheduled_for <= NOW() ORDER BY scheduled_for LIMIT 100"
            ).fetchall()
            if not rows:
                break
            for row in rows:
                if row["device_token"]:
                    notification = IOSNotification(
                        payload=IOSPayload(
                            alert=IOSPayloadAlert(
                                title="Follow-up from your provider", body=row["display_text"]
                            ),
                            sound="default",
                            custom={
                                "conversation_id": str(row["conversation_id"]),
                                "type": "follow_up",
                            },
                        ),
                        topic=args.topic,
                    )
                    try:
                        client.push(notification, row["device_token"])
                        pushed += 1
                    except (apns_exc.APNSException, NotImplementedError) as exc:
                        errors += 1
                        print(f"push failed: {type(exc).__name__}", file=sys.stderr)
                conn.execute(
                    "UPDATE follow_up_requests SET status = 'sent', sent_at = NOW() WHERE id = %s",
                    (row["id"],),
                )
                conn.execute(
                    "INSERT INTO follow_up_messages "
                    "(id, conversation_id, user_id, message_content, is_from_user, "
                    "follow_up_id, timestamp) VALUES (%s, %s, %s, %s, false, %s, NOW())",
                    (
                        uuid.uuid4(),
                        row["conversation_id"],
                        row["user_id"],
                        row["display_text"],
                        row["id"],
                    ),
                )
                delivered += 1
    client.close()
    print(
        json.dumps(
            {
                "delivered": delivered,
                "pushed": pushed,
                "push_errors": errors,
                "seconds": time.perf_counter() - started,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
