"""The OpenAPI 3.1 description of the node's HTTP API, served at /v1/openapi.json."""

from __future__ import annotations

from typing import Any

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "UTF-8, 1-1024 bytes, '/'-separated, no empty, '.' or '..' segment, no NUL"}
_VERSION_Q = {"name": "version", "in": "query", "schema": {"type": "integer", "minimum": 1},
              "description": "a version; without it the latest (not cacheable)"}
_SUMMARY = {"application/json": {"schema": {"$ref": "#/components/schemas/VersionSummary"}}}
_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_HASH = {"name": "hash", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
_ERRORS = {"400": _ERR, "404": _ERR, "409": _ERR, "413": _ERR, "500": _ERR, "507": _ERR}

_content_get = {
    "summary": "Read a key's content (latest, or ?version=N); supports Range and If-None-Match",
    "parameters": [_KEY, _VERSION_Q],
    "responses": {"200": {"description": "content", "content": _BYTES},
                  "206": {"description": "partial content", "content": _BYTES},
                  "304": {"description": "not modified (versioned GET)"},
                  "416": _ERR, **_ERRORS},
}
_content_put = {
    "summary": "Store the streamed body as the next version; ?parent=N makes it a compare-and-set",
    "parameters": [_KEY, {"name": "parent", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
    "requestBody": {"content": _BYTES},
    "responses": {"201": {"description": "the new version", "content": _SUMMARY}, **_ERRORS},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Elton node API", "version": "1"},
    "paths": {
        "/v1/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        "/v1/status": {"get": {"summary": "Identity, role, addresses, store usage, cache usage, issuance service counters",
                               "responses": {"200": {"description": "status"}}}},
        "/v1/keys": {"get": {
            "summary": "List keys with their latest version",
            "parameters": [{"name": "prefix", "in": "query", "schema": {"type": "string"}},
                           {"name": "after", "in": "query", "schema": {"type": "string"}},
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
            "responses": {"200": {"description": "keys"}, "400": _ERR}}},
        "/v1/keys/{key}": {"get": _content_get, "head": _content_get, "put": _content_put},
        "/v1/data/{key}": {"get": _content_get, "head": _content_get, "put": _content_put},
        "/v1/keys/{key}/versions": {
            "get": {"summary": "A key's versions, newest first", "parameters": [
                _KEY, {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                {"name": "before", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "versions"}, **_ERRORS}},
            "post": {"summary": "Issue a version from chunks already uploaded (eltonfs trees)",
                     "description": "Acknowledged (201) only once its chunks, and those it names in "
                                    "`durable`, are on `copies` store hosts.",
                     "parameters": [_KEY],
                     "requestBody": {"content": {"application/json": {"schema": {
                         "$ref": "#/components/schemas/CommitRequest"}}}},
                     "responses": {"201": {"description": "the new manifest"}, **_ERRORS}},
        },
        "/v1/keys/{key}/versions/{version}": {"get": {
            "summary": "A version's signed manifest (version is N or 'latest')",
            "parameters": [_KEY, {"name": "version", "in": "path", "required": True,
                                  "schema": {"type": "string"}}],
            "responses": {"200": {"description": "manifest"}, **_ERRORS}}},
        "/v1/chunks/{hash}": {
            "get": {"summary": "A chunk's verified bytes", "parameters": [
                _HASH, {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "author", "in": "query", "schema": {"type": "string"},
                 "description": "node id of a host likely to hold it, tried when no master knows a holder"}],
                    "responses": {"200": {"description": "bytes", "content": _BYTES}, **_ERRORS}},
            "put": {"summary": "Upload a chunk; its BLAKE3 hash must match", "parameters": [_HASH],
                    "requestBody": {"content": _BYTES},
                    "responses": {"200": {"description": "already stored"},
                                  "201": {"description": "stored"}, **_ERRORS}},
        },
        "/v1/chunks/stream": {"post": {
            "summary": "The bytes of a list of chunks, in order; chunks missing here are fetched from the mesh",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"chunks": {"type": "array", "items": {
                    "type": "array", "prefixItems": [{"type": "string"}, {"type": "integer", "minimum": 1}]}},
                    "author": {"type": "string",
                               "description": "node id of a host likely to hold them, tried when no master knows a holder"}}}}}},
            "responses": {"200": {"description": "bytes", "content": _BYTES}, **_ERRORS}}},
        "/v1/pending": {"get": {"summary": "Commits kept here until their key's home is reachable",
                                "responses": {"200": {"description": "pending commits"}}}},
        "/v1/where/{key}": {"get": {"summary": "A key's home, replicas, latest version and holders",
                                    "parameters": [_KEY], "responses": {"200": {"description": "placement"},
                                                                        **_ERRORS}}},
        "/v1/members": {"get": {"summary": "The membership view",
                                "responses": {"200": {"description": "members"}}}},
        "/v1/mesh": {"get": {"summary": "Mesh id, member counts, dropped messages by reason",
                             "responses": {"200": {"description": "mesh"}}}},
        "/v1/mesh/token": {"post": {"summary": "A join token (on the host holding the admin key)",
                                    "responses": {"200": {"description": "token"}, "401": _ERR}}},
        "/v1/mesh/remove": {"post": {"summary": "Revoke a host", "responses": {"200": {"description": "removed"},
                                                                             "400": _ERR, "401": _ERR}}},
        "/v1/metrics": {"get": {"summary": "Fetch and cache counters, Prometheus text format",
                                "responses": {"200": {"description": "metrics"}}}},
        "/v1/stats": {"get": {"summary": "Fetch and cache counters as JSON", "responses": {"200": {"description": "stats"}}}},
        "/v1/chunks/missing": {"post": {
            "summary": "Which of these chunks this node lacks",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"hashes": {"type": "array", "items": {"type": "string"}}}}}}},
            "responses": {"200": {"description": "missing hashes"}, "400": _ERR}}},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error", "message"],
                  "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
        "VersionSummary": {"type": "object", "properties": {
            "key": {"type": "string"}, "version": {"type": "integer"}, "parent": {"type": "integer"},
            "size": {"type": "integer"}, "content_hash": {"type": "string"}, "author": {"type": "string"},
            "issuer": {"type": "string"}, "issued_at": {"type": "number"}, "kind": {"type": "string"},
            "meta": {"type": "object"}, "chunk_count": {"type": "integer"}}},
        "CommitRequest": {"type": "object", "required": ["chunks"], "properties": {
            "chunks": {"type": "array", "items": {"type": "object", "properties": {
                "hash": {"type": "string"}, "size": {"type": "integer"}}}},
            "size": {"type": "integer"}, "content_hash": {"type": "string"},
            "kind": {"type": "string", "enum": ["file", "tree"]}, "meta": {"type": "object"},
            "parent": {"type": "integer", "minimum": 0,
                       "description": "expected latest version (0: the key must not exist)"},
            "durable": {"type": "array", "maxItems": 500000, "items": {
                "type": "array", "prefixItems": [{"type": "string"}, {"type": "integer", "minimum": 0}]},
                "description": "optional [hash, size] of more chunks the version needs but does not list "
                               "(an eltonfs tree's new directory objects and the chunks of its changed "
                               "files). Each must be stored on this node with that size (chunk_missing "
                               "otherwise); like the listed chunks, they are placed on `copies` holders "
                               "before the version is issued. The manifest does not name them."}}},
    }},
}
