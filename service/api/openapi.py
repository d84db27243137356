"""The OpenAPI 3.1 document of the worker's HTTP API (served at ``/openapi.json``).

Message bodies reference the published JSON Schemas of ``schemas/json`` so the
API and the Kafka contracts cannot drift apart.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from schemas import load_schema
from schemas.events import EVENT_MODELS

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable reason"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "per item (POST /events: index, reason, detail, field errors)",
            "items": {"type": "object"},
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
        503: "not available yet",
    }
    return {
        str(code): _response(text[code], {"$ref": "#/components/schemas/Error"}) for code in codes
    }


_ACCOUNT = {"name": "account_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME = {"type": "string", "description": "RFC 3339 timestamp or epoch milliseconds"}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    event_schemas = {name: load_schema("events", name) for name in EVENT_MODELS}
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
                    "parameters": [
                        _ACCOUNT,
                        {"name": "as_of", "in": "query", "required": False, "schema": _TIME},
                    ],
                    "security": read_security,
                    "responses": {
                        "200": _response("the score", {"$ref": "#/components/schemas/HealthScore"}),
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/accounts/{account_id}/history": {
                "get": {
                    "summary": "Stored scores, bucket changes and playbook triggers (SQL)",
                    "parameters": [
                        _ACCOUNT,
                        {"name": "since", "in": "query", "schema": _TIME},
                        {"name": "until", "in": "query", "schema": _TIME},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "maximum": 10000},
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
                    "summary": "Record a CSM pulse (rating, reason, optional expires_at)",
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
                                        "rating": {"enum": ["green", "yellow", "red"]},
                                        "reason": {"type": "string", "minLength": 1},
                                        "expires_at": _TIME,
                                        "event_id": {"type": "string"},
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
