"""``python -m cli.latency_agent``: the agent without the rest of the ``topiary`` command."""

from __future__ import annotations

from cli.latency_agent import main

raise SystemExit(main())
