"""Entry point of the `followups` command.

The idle `send-due` (nothing to deliver, most minutes of the day) is answered by
followup_cli.idle without importing Typer or SQLAlchemy; everything else goes to the
Typer application in followup_cli.cli.
"""

from __future__ import annotations

import sys


def main() -> None:
    if "send-due" in sys.argv[1:]:
        from followup_cli.idle import fast_send_due

        code = fast_send_due(sys.argv[1:])
        if code is not None:
            sys.exit(code)
    from followup_cli.cli import main as cli_main

    cli_main()
