//! The contract: the OpenAPI 3.1 document, generated from the routes and types themselves
//! (`utoipa`), served at `/openapi.json` and committed as `openapi.json` (a test keeps the
//! two equal). Responses every authenticated operation shares are added here once.

use std::sync::LazyLock;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, Ref, RefOr};

use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// Every route with its part of the document; `/metrics` only `with_metrics` (else it is
/// served on a listener of its own).
pub(super) fn routes(with_metrics: bool) -> OpenApiRouter<AppState> {
    let routes = OpenApiRouter::new()
        .merge(super::tokens::router())
        .merge(super::grants::router())
        .merge(super::health::router())
        .routes(routes!(openapi_json));
    if with_metrics {
        routes.merge(super::health::metrics_router())
    } else {
        routes
    }
}

/// This contract (OpenAPI 3.1), as committed at the repository root as `openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document",
        body = Object, content_type = "application/json")))]
async fn openapi_json() -> impl IntoResponse {
    static DOCUMENT: LazyLock<String> = LazyLock::new(json);
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The whole document.
pub fn document() -> OpenApi {
    let (_, paths) = routes(true).split_for_parts();
    finish(paths)
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn json() -> String {
    let mut json = document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

/// Adds what the routes do not say themselves: info, the bearer scheme, tags, and the
/// error responses every authenticated operation can give.
pub(super) fn finish(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("token-store")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Keeps third-party OAuth grants sealed under AWS KMS and hands out access tokens \
             that are valid now. Errors are `application/problem+json` with a stable `code`.",
        ))
        .license(Some(LicenseBuilder::new().name("UNLICENSED").build()))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("A client's API key: `Authorization: Bearer <key>`"))
                .build(),
        ),
    );
    doc.tags = Some(vec![
        TagBuilder::new()
            .name("grants")
            .description(Some("Store, read, refresh and delete grants"))
            .build(),
        TagBuilder::new()
            .name("lifecycle")
            .description(Some(
                "Each grant's health, and the webhook deliveries of grant events",
            ))
            .build(),
        TagBuilder::new()
            .name("health")
            .description(Some(
                "Liveness, readiness, metrics and this document; no key",
            ))
            .build(),
    ]);
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                for (status, response) in common_responses() {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert(response);
                }
            }
        }
    }
    doc
}

/// Responses of every authenticated operation (an operation's own take precedence).
fn common_responses() -> Vec<(&'static str, RefOr<utoipa::openapi::Response>)> {
    let problem = |description: &str| {
        ResponseBuilder::new().description(description).content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
    };
    let integer = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
    };
    vec![
        (
            "400",
            problem(
                "`invalid_request`: malformed JSON, more than one `Authorization` header, or \
                 an HTTP/1.1 request without one `Host`",
            )
            .build()
            .into(),
        ),
        (
            "401",
            problem("`unauthorized`: no API key, or an unknown one")
                .header(
                    "WWW-Authenticate",
                    HeaderBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .description(Some("`Bearer`"))
                        .build(),
                )
                .build()
                .into(),
        ),
        (
            "403",
            problem("`forbidden`: the key lacks the operation's permission")
                .build()
                .into(),
        ),
        (
            "422",
            problem("`invalid_request`: a bad path value (`userId`, `provider`)")
                .build()
                .into(),
        ),
        (
            "500",
            problem("`internal`: the body says only \"internal error\"")
                .build()
                .into(),
        ),
        (
            "503",
            problem("`kms_unavailable`, `database_unavailable` or `request_timeout`")
                .header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(Some(integer()))
                        .description(Some("Seconds to wait before retrying"))
                        .build(),
                )
                .build()
                .into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_openapi_json_is_what_the_code_generates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == json(),
            "openapi.json differs from the contract the code generates; regenerate it with \
             `cargo run --quiet -- openapi > openapi.json` and commit it with the change"
        );
    }

    #[test]
    fn every_authenticated_operation_documents_every_error_it_can_give() {
        let doc = document();
        let mut operations = 0;
        for (path, item) in &doc.paths.paths {
            for operation in [&item.get, &item.put, &item.post, &item.delete]
                .into_iter()
                .flatten()
            {
                if !path.starts_with("/v1/") {
                    assert!(operation.security.is_none(), "{path} needs no key");
                    continue;
                }
                operations += 1;
                let statuses: Vec<&str> = operation
                    .responses
                    .responses
                    .keys()
                    .map(String::as_str)
                    .collect();
                for status in ["400", "401", "403", "422", "500", "503"] {
                    assert!(
                        statuses.contains(&status),
                        "{path}: {status} in {statuses:?}"
                    );
                }
            }
        }
        assert_eq!(operations, 9);
    }
}
