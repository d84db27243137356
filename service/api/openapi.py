"""The OpenAPI 3.1 document of the worker's HTTP API (served at ``/openapi.json``).

Message bodies reference the published JSON Schemas of ``schemas/json`` so the
API and the Kafka contracts cannot drift apart.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from schemas import load_schema
from schemas.events import EVENT_MODELS
from service.api.intake import MAX_BATCH, MAX_LISTED_ERRORS

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "description": (
        "Every 4xx/5xx answer. `error` values: unauthorized, too_large, empty, not_json, "
        "not_object, too_many, invalid_events, invalid_pulse, key_mismatch, "
        "invalid_parameter, as_of_out_of_range, unknown_account, history_unavailable."
    ),
    "properties": {
        "error": {"type": "string", "description": "machine-readable reason"},
        "detail": {"type": "string", "description": "one line saying what to change"},
        "errors": {
            "type": "array",
            "maxItems": MAX_LISTED_ERRORS,
            "description": (
                "per item (POST /events: index, reason, detail, field errors), the first "
                f"{MAX_LISTED_ERRORS} only"
            ),
            "items": {"type": "object"},
        },
        "errors_not_listed": {
            "type": "integer",
            "minimum": 0,
            "description": "POST /events: invalid items beyond the listed ones",
        },
        "scored_at": {
            "type": "string",
            "description": "as_of_out_of_range: the account's last score (RFC 3339)",
        },
        "history": {
            "type": ["object", "null"],
            "description": "as_of_out_of_range: first and last stored score (RFC 3339), or null",
            "properties": {"first": {"type": "string"}, "last": {"type": "string"}},
        },
    },
}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid request",
        401: "missing or wrong bearer token",
        404: "unknown account",
        413: "body too large",
        503: "not available (the history database)",
    }
    return {
        str(code): _response(text[code], {"$ref": "#/components/schemas/Error"}) for code in codes
    }


_ACCOUNT = {"name": "account_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME = {"type": "string", "description": "RFC 3339 time with an offset, or epoch milliseconds"}
_SOURCE = {
    "Vitals-Score-Source": {
        "description": (
            "`state`: computed from the account's state at as_of (from its last score on); "
            "`history`: the newest stored score at or before as_of (earlier instants)"
        ),
        "schema": {"enum": ["state", "history"]},
    }
}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    event_schemas = {name: load_schema("events", name) for name in EVENT_MODELS}
    pulse = event_schemas["pulse"]["properties"]
    components: dict[str, Any] = {
        "Error": _ERROR,
        "HealthScore": load_schema("outputs", "health-score"),
        "BucketChange": load_schema("outputs", "bucket-change"),
        "PlaybookTrigger": load_schema("outputs", "playbook-trigger"),
        "Event": {"oneOf": [{"$ref": f"#/components/schemas/event_{n}"} for n in event_schemas]},
        **{f"event_{name}": schema for name, schema in event_schemas.items()},
    }
    read_security: list[dict[str, list[str]]] = [{}, {"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vitals",
            "version": "1",
            "description": (
                "Real-time customer health scores. Any worker answers for any account. "
                "POST endpoints need 'Authorization: Bearer <VITALS_API_TOKEN>'; GET "
                "endpoints too when VITALS_API_READ_TOKEN_REQUIRED=true."
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/accounts/{account_id}/health": {
                "get": {
                    "summary": "Latest score with its explanation (routed to the owning worker)",
                    "description": (
                        "Without as_of: the latest score. An as_of from the account's last "
                        "score on is explained from its state (silence counts). An earlier "
                        "as_of is answered from the SQL history: the newest stored score at "
                        "or before it (header Vitals-Score-Source: history; its own as_of "
                        "says which instant it is), or 400 as_of_out_of_range naming the "
                        "instants that can be asked when the history holds none (503 "
                        "history_unavailable without a reachable history database)."
                    ),
                    "parameters": [
                        _ACCOUNT,
                        {"name": "as_of", "in": "query", "required": False, "schema": _TIME},
                    ],
                    "security": read_security,
                    "responses": {
                        "200": {
                            **_response("the score", {"$ref": "#/components/schemas/HealthScore"}),
                            "headers": _SOURCE,
                        },
                        **_errors(400, 401, 404, 503),
                    },
                }
            },
            "/accounts/{account_id}/history": {
                "get": {
                    "summary": "Stored scores, bucket changes and playbook triggers (SQL)",
                    "description": (
                        "Times in [since, until); each list holds its most recent `limit` "
                        "items, oldest first."
                    ),
                    "parameters": [
                        _ACCOUNT,
                        {"name": "since", "in": "query", "schema": _TIME},
                        {"name": "until", "in": "query", "schema": _TIME},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 10000,
                                "default": 500,
                            },
                        },
                    ],
                    "security": read_security,
                    "responses": {
                        "200": _response("history", {"type": "object"}),
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/accounts/{account_id}/state": {
                "get": {
                    "summary": "Raw state summary of one account (routed to the owning worker)",
                    "description": "Times (first_event_at, last_event_at, last_activity_at, "
                    "scored_at, snapshot.customer_since, snapshot.renewal_at) are RFC 3339 UTC.",
                    "parameters": [_ACCOUNT],
                    "security": read_security,
                    "responses": {
                        "200": _response("state", {"type": "object"}),
                        **_errors(401, 404),
                    },
                }
            },
            "/portfolio": {
                "get": {
                    "summary": "Accounts and ARR per bucket, red share against target, movers",
                    "description": "as_of (when the portfolio was gathered) is RFC 3339 UTC.",
                    "security": read_security,
                    "responses": {
                        "200": _response("portfolio", {"type": "object"}),
                        **_errors(401),
                    },
                }
            },
            "/accounts": {
                "get": {
                    "summary": (
                        "Accounts of every worker, filtered, sorted and paged by the server "
                        "(complete=false and unreachable name the workers that did not answer)"
                    ),
                    "parameters": [
                        *(
                            {
                                "name": name,
                                "in": "query",
                                "description": "comma-separated values; (none) = field absent",
                                "schema": {"type": "string"},
                            }
                            for name in ("bucket", "segment", "stage", "csm_owner")
                        ),
                        {
                            "name": "q",
                            "in": "query",
                            "description": "account id contains (any case)",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "sort",
                            "in": "query",
                            "schema": {
                                "enum": [
                                    "arr_at_risk",
                                    "score",
                                    "movers_7d",
                                    "movers_30d",
                                    "arr",
                                    "account_id",
                                ]
                            },
                        },
                        {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"]}},
                        {
                            "name": "page",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                        {
                            "name": "page_size",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                    ],
                    "security": read_security,
                    "responses": {
                        "200": _response(
                            "total, page, pages, items, summary (the /portfolio shape of the "
                            "matching accounts), facets",
                            {"type": "object"},
                        ),
                        **_errors(400, 401),
                    },
                }
            },
            "/accounts/{account_id}/overview": {
                "get": {
                    "summary": (
                        "What the account page shows: health, state, gates with reasons, pulse, "
                        "metric labels, bucket thresholds (routed to the owning worker)"
                    ),
                    "parameters": [_ACCOUNT],
                    "security": read_security,
                    "responses": {
                        "200": _response("overview", {"type": "object"}),
                        **_errors(401, 404),
                    },
                }
            },
            "/events": {
                "post": {
                    "summary": "Ingest events: one object, an array, or NDJSON; all or nothing",
                    "description": (
                        f"At most {MAX_BATCH} events. Validated exactly like the Kafka path; "
                        "one invalid event rejects the request (400 invalid_events) with the "
                        f"first {MAX_LISTED_ERRORS} errors listed and the rest counted in "
                        "errors_not_listed. An NDJSON line that is not JSON is named by its "
                        "line number."
                    ),
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Event"},
                                        {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Event"},
                                        },
                                    ]
                                }
                            },
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "202": _response("accepted and acknowledged by Kafka", {"type": "object"}),
                        **_errors(400, 401, 413),
                    },
                }
            },
            "/accounts/{account_id}/pulse": {
                "post": {
                    "summary": "Record a CSM pulse (rating, reason; author, expires_at optional)",
                    "description": (
                        "The account comes from the path; event_id (for idempotent retries) "
                        "and occurred_at (default: now) are optional. Validated like a pulse "
                        "event: reason 1-1,000 characters without control characters, "
                        "expires_at not before occurred_at."
                    ),
                    "parameters": [_ACCOUNT],
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["rating", "reason"],
                                    "properties": {
                                        name: pulse[name]
                                        for name in (
                                            "rating",
                                            "reason",
                                            "author",
                                            "expires_at",
                                            "event_id",
                                            "occurred_at",
                                        )
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _response("accepted", {"type": "object"}),
                        **_errors(400, 401, 413),
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _response("alive")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: partitions owned and tables recovered",
                    "responses": {"200": _response("ready"), "503": _response("not ready")},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": _response("metrics")}}
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _response("OpenAPI")}}
            },
        },
    }
