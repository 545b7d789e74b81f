"""schemathesis hooks for scripts/contract-test.sh (loaded through SCHEMATHESIS_HOOKS).

One check replaces schemathesis's `positive_data_acceptance` (which the script excludes):

`positive_data_acceptance_token_store` is the built-in check, except that it accepts a 422
whose problem `code` is `provider_not_configured`. That answer is the documented outcome of
a *valid* refresh (or of an access-token request that needs one) for a provider the service
has no OAuth client for. Whether a provider is configured is deployment state that no
schema can express, and generated provider names are mostly unconfigured, so the built-in
check (valid input must not get 422) would fail on correct behaviour. Every other 422 to
schema-valid input still fails, with the built-in check's message.
"""

import json

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

# Problem codes that a schema-valid request may legitimately get with 422.
_STATE_DEPENDENT_422_CODES = frozenset({"provider_not_configured"})


def _problem_code(response):
    try:
        body = json.loads(response.content)
    except (TypeError, ValueError):
        return None
    return body.get("code") if isinstance(body, dict) else None


@schemathesis.check
def positive_data_acceptance_token_store(ctx, response, case):
    if response.status_code == 422 and _problem_code(response) in _STATE_DEPENDENT_422_CODES:
        return None
    return positive_data_acceptance(ctx, response, case)


# ---------------------------------------------------------------------------------------
# Links for the stateful phase.
#
# A PUT answers 204 with no body and no Location, so schemathesis cannot infer that it
# created the grant at its own path, and without OpenAPI links its stateful phase has
# nothing to chain ("not applicable"). These links say what the API does: after a PUT (or
# a DELETE), the same userId/provider address the grant for GET, access-token, refresh and
# DELETE. That lets the stateful phase run sequences such as PUT -> GET (200, body checked
# against the schema) -> DELETE -> GET (404, `use_after_free`). They are added only where
# the served document declares no links of its own on that response.

_GRANT = "/v1/users/{userId}/tokens/{provider}"
_SAME_GRANT = {"userId": "$request.path.userId", "provider": "$request.path.provider"}
_LINKS = {
    ("put", "204"): {
        "GetToken": ("get", _GRANT),
        "GetAccessToken": ("post", _GRANT + "/access-token"),
        "RefreshToken": ("post", _GRANT + "/refresh"),
        "DeleteToken": ("delete", _GRANT),
    },
    ("delete", "204"): {
        "GetToken": ("get", _GRANT),
        "GetAccessToken": ("post", _GRANT + "/access-token"),
        "PutToken": ("put", _GRANT),
    },
}


def _operation_ref(method, path):
    pointer = path.replace("~", "~0").replace("/", "~1")
    return f"#/paths/{pointer}/{method}"


@schemathesis.hook
def before_load_schema(context, raw_schema):
    paths = raw_schema.get("paths") or {}
    grant = paths.get(_GRANT) or {}
    for (method, status), links in _LINKS.items():
        response = ((grant.get(method) or {}).get("responses") or {}).get(status)
        if not isinstance(response, dict) or "$ref" in response or response.get("links"):
            continue
        response["links"] = {
            name: {"operationRef": _operation_ref(target_method, target_path), "parameters": dict(_SAME_GRANT)}
            for name, (target_method, target_path) in links.items()
            if target_method in (paths.get(target_path) or {})
        }
