"""HTTP API served by every worker (faust's aiohttp web server).

Any worker answers for any account: per-account pages are routed to the worker
owning the account's partition (faust ``table_route``); ``/portfolio`` gathers
every worker's part. Handlers are thin: validation lives in
``service.api.intake``, aggregation in ``service.api.portfolio``, history
queries in ``service.history.db``. One module per group of pages:

* :mod:`streams.web.operations` -- ``/metrics``, ``/healthz``, ``/readyz``, ``/openapi.json``;
* :mod:`streams.web.accounts` -- ``/accounts/{id}/state|health|history``;
* :mod:`streams.web.portfolio` -- ``/portfolio`` and its per-worker part;
* :mod:`streams.web.intake` -- ``POST /events`` and ``POST /accounts/{id}/pulse``;
* :mod:`streams.web.ui_data` -- ``/accounts`` (the account list) and ``/accounts/{id}/overview``;
* :mod:`streams.web.ui` -- the web UI's files under ``/ui/``;

and :mod:`streams.web.common` for what they share (token check, errors, bodies).
"""

from __future__ import annotations

from streams.app import Topology
from streams.processor import Processor
from streams.web.accounts import install_accounts
from streams.web.common import Api
from streams.web.intake import install_intake
from streams.web.operations import install_operations
from streams.web.portfolio import install_portfolio
from streams.web.ui import install_ui
from streams.web.ui_data import install_ui_data

__all__ = ["install_web"]


def install_web(top: Topology, processor: Processor) -> None:
    """Register the worker's HTTP pages on the faust web server."""
    api = Api(top, processor)
    install_operations(api)
    install_accounts(api)
    install_portfolio(api)
    install_intake(api)
    install_ui_data(api)
    install_ui(api)
