//! OAuth providers: where to refresh and revoke a grant, and how to authenticate there.
//!
//! A provider is data ([`ProviderSettings`], from the configuration) plus the small [`Provider`] trait. One
//! implementation, [`OAuth2Provider`], speaks RFC 6749 (refresh grant) and RFC 7009
//! (revocation); `google` is that implementation with Google's endpoints as defaults and its
//! `error_subtype` parsed. Microsoft and others are configured as `kind = "oauth2"`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{ClientAuth, ProviderKind, ProviderSettings};
use crate::domain::{AccessToken, ProviderName, RefreshToken, Scope};
use crate::metrics::Metrics;

pub const GOOGLE_TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";
pub const GOOGLE_REVOKE_ENDPOINT: &str = "https://oauth2.googleapis.com/revoke";
/// The metric label of every provider name that is not configured.
pub const UNCONFIGURED: &str = "unconfigured";

/// What a successful refresh returned.
#[derive(Debug)]
pub struct Refreshed {
    pub access_token: AccessToken,
    /// `None`: the provider kept the old refresh token.
    pub refresh_token: Option<RefreshToken>,
    pub expires_in: Duration,
    /// `None`: the provider did not say; the grant's scopes are unchanged.
    pub scopes: Option<Vec<Scope>>,
}

/// A refresh or revocation that did not succeed, classified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The grant is dead (`invalid_grant`): only the user's consent brings it back.
    #[error("the provider rejected the grant ({error})")]
    Terminal { error: String },
    /// The provider rejected our OAuth client, not the grant (`invalid_client`,
    /// `unauthorized_client`): the operator must fix the client's configuration; the grant
    /// is untouched and works again once that is done.
    #[error("the provider rejected the OAuth client ({error})")]
    Misconfigured { error: String },
    /// 5xx, 429, timeout or network failure: try again later.
    #[error("the provider is unavailable ({reason})")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Anything else the provider said (another OAuth error, a malformed response).
    #[error("unexpected provider response ({reason})")]
    Unexpected { reason: String },
}

impl ProviderError {
    /// A short, secret-free code for bookkeeping and metrics.
    pub fn code(&self) -> String {
        match self {
            Self::Terminal { error } | Self::Misconfigured { error } => error.clone(),
            Self::Transient { reason, .. } | Self::Unexpected { reason } => reason.clone(),
        }
    }
}

/// The two things a provider does for us.
pub trait Provider: Send + Sync {
    fn refresh<'a>(
        &'a self,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<Refreshed, ProviderError>>;

    /// Revokes a token (RFC 7009). `Ok(false)` when the provider has no revocation endpoint.
    fn revoke<'a>(
        &'a self,
        token: &'a str,
        hint: &'static str,
    ) -> BoxFuture<'a, Result<bool, ProviderError>>;
}

/// The configured providers by name.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<dyn Provider>>,
    /// The providers whose replaced refresh tokens are revoked (`revoke_superseded`).
    revoke_superseded: std::collections::HashSet<String>,
}

impl Providers {
    /// Builds every configured provider with one shared HTTP client.
    pub fn from_settings(
        settings: &HashMap<String, ProviderSettings>,
        timeout: Duration,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("token-store/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut by_name: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        let revoke_superseded = settings
            .iter()
            .filter(|(_, s)| s.revoke_superseded)
            .map(|(name, _)| name.clone())
            .collect();
        for (name, s) in settings {
            let name =
                ProviderName::parse(name).map_err(|e| anyhow::anyhow!("provider {name:?}: {e}"))?;
            let provider = OAuth2Provider::new(name.clone(), s, http.clone(), metrics.clone())?;
            by_name.insert(name.as_str().to_owned(), Arc::new(provider));
        }
        Ok(Self {
            by_name,
            revoke_superseded,
        })
    }

    /// Whether a replaced grant's refresh token is revoked at this provider.
    pub fn revokes_superseded(&self, name: &ProviderName) -> bool {
        self.revoke_superseded.contains(name.as_str())
    }

    pub fn get(&self, name: &ProviderName) -> Option<Arc<dyn Provider>> {
        self.by_name.get(name.as_str()).cloned()
    }

    /// The metric label of a provider: its name if it is configured, else `unconfigured`.
    /// Callers choose provider names, and every label value is a series kept forever.
    pub fn label<'a>(&self, name: &'a ProviderName) -> &'a str {
        if self.by_name.contains_key(name.as_str()) {
            name.as_str()
        } else {
            UNCONFIGURED
        }
    }
}

/// RFC 6749 refresh and RFC 7009 revocation over HTTPS (or HTTP on loopback in tests).
pub struct OAuth2Provider {
    name: ProviderName,
    kind: ProviderKind,
    client_id: String,
    client_secret: SecretString,
    token_endpoint: String,
    revoke_endpoint: Option<String>,
    client_auth: ClientAuth,
    rotates_refresh_tokens: bool,
    http: reqwest::Client,
    metrics: Metrics,
}

impl OAuth2Provider {
    pub fn new(
        name: ProviderName,
        s: &ProviderSettings,
        http: reqwest::Client,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let kind = s.kind.unwrap_or(if name.as_str() == "google" {
            ProviderKind::Google
        } else {
            ProviderKind::Oauth2
        });
        let (token_endpoint, revoke_endpoint) = match kind {
            ProviderKind::Google => (
                s.token_endpoint
                    .clone()
                    .unwrap_or_else(|| GOOGLE_TOKEN_ENDPOINT.to_owned()),
                Some(
                    s.revoke_endpoint
                        .clone()
                        .unwrap_or_else(|| GOOGLE_REVOKE_ENDPOINT.to_owned()),
                ),
            ),
            ProviderKind::Oauth2 => (
                s.token_endpoint.clone().ok_or_else(|| {
                    anyhow::anyhow!("provider {name}: token_endpoint is required for kind oauth2")
                })?,
                s.revoke_endpoint.clone(),
            ),
        };
        for url in std::iter::once(&token_endpoint).chain(&revoke_endpoint) {
            reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("provider {name}: bad endpoint {url:?}: {e}"))?;
        }
        Ok(Self {
            name,
            kind,
            client_id: s.client_id.clone(),
            client_secret: s.client_secret.clone(),
            token_endpoint,
            revoke_endpoint,
            client_auth: s.client_auth.unwrap_or(ClientAuth::ClientSecretPost),
            rotates_refresh_tokens: s.rotates_refresh_tokens,
            http,
            metrics,
        })
    }

    /// POSTs a form with the client's authentication; the secret is exposed only here.
    async fn post_form(
        &self,
        endpoint_label: &'static str,
        url: &str,
        mut form: Vec<(&str, &str)>,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), ProviderError> {
        let secret = self.client_secret.expose_secret();
        let mut request = self.http.post(url);
        match self.client_auth {
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret));
            }
            ClientAuth::ClientSecretBasic => {
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let credentials = format!("{}:{}", encode(&self.client_id), encode(secret));
                let basic = base64::engine::general_purpose::STANDARD.encode(credentials);
                request = request.header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"));
            }
        }
        let started = Instant::now();
        let result = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await;
        let response = match result {
            Ok(r) => r,
            Err(err) => {
                self.observe(endpoint_label, started);
                return Err(transport_error(&err));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_bounded(response).await;
        self.observe(endpoint_label, started);
        Ok((status, headers, body?))
    }

    fn observe(&self, endpoint: &str, started: Instant) {
        self.metrics
            .provider_latency
            .with_label_values(&[self.name.as_str(), endpoint])
            .observe(started.elapsed().as_secs_f64());
    }

    async fn do_refresh(&self, refresh_token: &RefreshToken) -> Result<Refreshed, ProviderError> {
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ];
        let (status, headers, body) = self.post_form("token", &self.token_endpoint, form).await?;
        if status.is_success() {
            let refreshed = parse_token_response(&self.name, &body)?;
            if self.rotates_refresh_tokens && refreshed.refresh_token.is_none() {
                tracing::warn!(provider = %self.name, "a rotating provider returned no new refresh token; keeping the old one");
            }
            return Ok(refreshed);
        }
        Err(self.classify_failure(status, &headers, &body))
    }

    async fn do_revoke(&self, token: &str, hint: &'static str) -> Result<bool, ProviderError> {
        let Some(url) = &self.revoke_endpoint else {
            return Ok(false);
        };
        let form = vec![("token", token), ("token_type_hint", hint)];
        let (status, headers, body) = self.post_form("revoke", url, form).await?;
        if status.is_success() {
            return Ok(true);
        }
        Err(self.classify_failure(status, &headers, &body))
    }

    fn classify_failure(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ProviderError {
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return ProviderError::Transient {
                reason: format!("http_{}", status.as_u16()),
                retry_after: retry_after(headers),
            };
        }
        match serde_json::from_slice::<OAuthError>(body) {
            Ok(err) => {
                // The provider may echo what it was sent (a token) in any of these fields:
                // only the sanitized code and texts that pass `loggable` are logged.
                let code = sanitize(&err.error);
                if let Some(subtype) = err
                    .error_subtype
                    .as_deref()
                    .filter(|_| self.kind == ProviderKind::Google)
                {
                    tracing::info!(provider = %self.name, error = %code, error_subtype = loggable(subtype), "provider refused");
                }
                tracing::debug!(
                    provider = %self.name,
                    error = %code,
                    description = loggable(err.error_description.as_deref().unwrap_or("")),
                    "OAuth error response"
                );
                match err.error.as_str() {
                    "invalid_grant" => ProviderError::Terminal { error: err.error },
                    "invalid_client" | "unauthorized_client" => {
                        ProviderError::Misconfigured { error: err.error }
                    }
                    "temporarily_unavailable" => ProviderError::Transient {
                        reason: err.error,
                        retry_after: retry_after(headers),
                    },
                    _ => ProviderError::Unexpected { reason: code },
                }
            }
            Err(_) => ProviderError::Unexpected {
                reason: format!("http_{}", status.as_u16()),
            },
        }
    }
}

impl Provider for OAuth2Provider {
    fn refresh<'a>(
        &'a self,
        refresh_token: &'a RefreshToken,
    ) -> BoxFuture<'a, Result<Refreshed, ProviderError>> {
        Box::pin(self.do_refresh(refresh_token))
    }

    fn revoke<'a>(
        &'a self,
        token: &'a str,
        hint: &'static str,
    ) -> BoxFuture<'a, Result<bool, ProviderError>> {
        Box::pin(self.do_revoke(token, hint))
    }
}

/// RFC 6749 §5.2 error response (plus Google's `error_subtype`).
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
    error_subtype: Option<String>,
}

/// RFC 6749 §5.1 successful response.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: Option<String>,
    /// Any JSON here: see [`expires_in`] for what is accepted.
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    token_type: Option<String>,
}

/// Access tokens without a usable `expires_in` are taken to live an hour (Google's and
/// Microsoft's).
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// The longest `expires_in` taken as given: a year.
const MAX_EXPIRES_IN_SECS: u64 = 31_536_000;

/// The longest `Retry-After` honoured, so that `now + retry_after` can never overflow.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The most of a provider's answer that is read. Token and error responses are a few KiB
/// at most; anything bigger is refused before it can grow the process.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Parses a successful token response. A bad `expires_in` never refuses it: the response
/// may carry a rotated refresh token, and refusing it would lose that (see [`expires_in`]).
fn parse_token_response(provider: &ProviderName, body: &[u8]) -> Result<Refreshed, ProviderError> {
    let malformed = |what: &str| ProviderError::Unexpected {
        reason: format!("malformed token response: {what}"),
    };
    let response: TokenResponse =
        serde_json::from_slice(body).map_err(|_| malformed("not the expected JSON"))?;
    if let Some(kind) = &response.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(malformed("token_type is not Bearer"));
        }
    }
    let scopes = match &response.scope {
        Some(scope) => Some(
            Scope::parse_list(&scope.split_whitespace().collect::<Vec<_>>())
                .map_err(|_| malformed("scope"))?,
        ),
        None => None,
    };
    Ok(Refreshed {
        access_token: AccessToken::parse(response.access_token)
            .map_err(|_| malformed("access_token"))?,
        refresh_token: response
            .refresh_token
            .map(RefreshToken::parse)
            .transpose()
            .map_err(|_| malformed("refresh_token"))?,
        expires_in: expires_in(provider, response.expires_in.as_ref()),
        scopes,
    })
}

/// The access token's lifetime. `expires_in` is taken as given when it is a whole number
/// of seconds from 1 to a year, sent as a JSON integer or as a numeric string (some
/// providers send strings). Anything else (0, negative, fractional, not a number, more than
/// a year) is ignored with a warning that names the provider. A missing or null one is
/// ignored without a warning, since RFC 6749 makes it optional. Either way the token is
/// taken to live [`DEFAULT_EXPIRES_IN`]. A lifetime taken too short only costs an earlier
/// refresh; one taken too long would hand out dead tokens.
fn expires_in(provider: &ProviderName, value: Option<&serde_json::Value>) -> Duration {
    use serde_json::Value;
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return DEFAULT_EXPIRES_IN;
    };
    let seconds = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    match seconds.filter(|s| (1..=MAX_EXPIRES_IN_SECS).contains(s)) {
        Some(seconds) => Duration::from_secs(seconds),
        None => {
            // A number is no secret and helps; a string or anything else is never logged.
            tracing::warn!(
                provider = %provider,
                expires_in = value.as_number().map(tracing::field::display),
                "expires_in out of range (1 s to a year); the access token is taken to live an hour"
            );
            DEFAULT_EXPIRES_IN
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for OAuth endpoints and ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The response body, read chunk by chunk up to [`MAX_RESPONSE_BYTES`]: a bigger one (by its
/// `Content-Length`, or once more than that has arrived) is a transient failure, and the
/// rest is never read.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let too_large = || ProviderError::Transient {
        reason: "response_too_large".to_owned(),
        retry_after: None,
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_error(err: &reqwest::Error) -> ProviderError {
    let reason = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "network"
    };
    ProviderError::Transient {
        reason: reason.to_owned(),
        retry_after: None,
    }
}

/// An OAuth error code as bookkeeping, metrics and logs may hold it: the code itself if it
/// is plain `snake_case` of at most 40 characters, else `unrecognized_error`.
fn sanitize(code: &str) -> String {
    // RFC 6749's codes and every provider's we know are short `snake_case`; anything else
    // (a token echoed as the code, say) is kept as a fixed word, not a filtered copy.
    let plain = !code.is_empty()
        && code.len() <= 40
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        code.to_owned()
    } else {
        "unrecognized_error".to_owned()
    }
}

/// A provider's free text (`error_description`, `error_subtype`) as it may be logged:
/// as sent if it is short plain text, else `"[omitted]"`. Plain text is at most 200 ASCII
/// letters, digits, spaces and `_-.,:'()`, in words of at most 24 characters: a longer word
/// looks like a token or an id (Google's access tokens pass the character check).
fn loggable(text: &str) -> &str {
    let plain = text.len() <= 200
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _-.,:'()".contains(c))
        && text.split(' ').all(|word| word.len() <= 24);
    if plain {
        text
    } else {
        "[omitted]"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn google() -> ProviderName {
        ProviderName::parse("google").unwrap()
    }

    #[test]
    fn parses_a_refresh_response_with_and_without_rotation() {
        let r = parse_token_response(
            &google(),
            br#"{"access_token":"ya29.a","expires_in":3599,"scope":"openid email","token_type":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(r.access_token.expose(), "ya29.a");
        assert!(r.refresh_token.is_none());
        assert_eq!(r.expires_in, Duration::from_secs(3599));
        assert_eq!(r.scopes.unwrap().len(), 2);

        let r = parse_token_response(
            &google(),
            br#"{"access_token":"a","refresh_token":"r2","token_type":"bearer"}"#,
        )
        .unwrap();
        assert_eq!(r.refresh_token.unwrap().expose(), "r2");
        assert_eq!(r.expires_in, DEFAULT_EXPIRES_IN);
        assert!(r.scopes.is_none());

        assert!(parse_token_response(&google(), b"{}").is_err());
        assert!(
            parse_token_response(&google(), br#"{"access_token":"a","token_type":"mac"}"#).is_err()
        );
    }

    #[test]
    fn expires_in_is_taken_only_from_one_second_to_a_year() {
        let hour = DEFAULT_EXPIRES_IN;
        let cases: &[(&str, Duration)] = &[
            ("1", Duration::from_secs(1)),
            ("3599", Duration::from_secs(3599)),
            ("31536000", Duration::from_secs(31_536_000)),
            (r#""3600""#, Duration::from_secs(3600)),
            (r#""7200""#, Duration::from_secs(7200)),
            ("0", hour),
            ("-5", hour),
            ("3.5", hour),
            (r#""abc""#, hour),
            (r#""-5""#, hour),
            (r#""""#, hour),
            ("31536001", hour),
            ("9000000000000", hour),
            ("18446744073709551615", hour),
            ("1e30", hour),
            ("true", hour),
            ("[3600]", hour),
            ("null", hour),
        ];
        for (value, expected) in cases {
            let body = format!(
                r#"{{"access_token":"a","refresh_token":"r2","expires_in":{value},"token_type":"Bearer"}}"#
            );
            let r = parse_token_response(&google(), body.as_bytes())
                .unwrap_or_else(|e| panic!("expires_in {value}: {e}"));
            assert_eq!(r.expires_in, *expected, "expires_in {value}");
            // Accepted anyway: a rotated refresh token in it must not be lost.
            assert_eq!(r.refresh_token.unwrap().expose(), "r2");
        }
        let absent = parse_token_response(&google(), br#"{"access_token":"a"}"#).unwrap();
        assert_eq!(absent.expires_in, hour);
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_clamped_to_an_hour() {
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers)
        };
        assert_eq!(header("120"), Some(Duration::from_secs(120)));
        assert_eq!(header("3600"), Some(MAX_RETRY_AFTER));
        assert_eq!(header("3601"), Some(MAX_RETRY_AFTER));
        assert_eq!(header("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(header("abc"), None);
        assert_eq!(header("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn only_short_plain_text_from_a_provider_is_loggable() {
        for text in [
            "",
            "Token has been expired or revoked.",
            "invalid_rapt",
            "reauth related error (invalid_rapt)",
            "AADSTS700082: the refresh token has expired, isn't it",
        ] {
            assert_eq!(loggable(text), text);
        }
        for text in [
            "1//0gAbCdEf-refresh-token",
            "token=abc",
            "ya29.a0AfB_byC1234567890abcdefghijklmnop",
            "bad token ya29.access-0123456789abcdef0123456789abcdef",
            "line\nbreak",
            "quote\"d",
            "caf\u{e9}",
            "word ".repeat(41).as_str(),
        ] {
            assert_eq!(loggable(text), "[omitted]", "{text}");
        }
    }

    #[test]
    fn sanitize_keeps_plain_codes_and_replaces_anything_else() {
        assert_eq!(sanitize("invalid_scope"), "invalid_scope");
        assert_eq!(sanitize("a b\"c\n"), "unrecognized_error");
        assert_eq!(sanitize(&"x".repeat(41)), "unrecognized_error");
        assert_eq!(sanitize("ya29A0AfH6SMBx"), "unrecognized_error");
        assert_eq!(sanitize(""), "unrecognized_error");
    }
}
