//! Domain types. Each is parsed once, at the boundary, and trusted everywhere after
//! ("parse, don't validate"): a `UserId` that exists is a valid user id.

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

/// Why a value was refused. The message names the rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {rule}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub rule: &'static str,
}

fn invalid(field: &'static str, rule: &'static str) -> InvalidInput {
    InvalidInput { field, rule }
}

/// The caller's id for one of its users: 1 to 128 characters of `A-Z a-z 0-9 . _ - @ : +`,
/// not `.` or `..`, and not shaped like an email address (it is logged by KMS in CloudTrail).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(invalid("userId", "must be 1 to 128 characters"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-@:+".contains(c);
        if !raw.chars().all(allowed) {
            return Err(invalid(
                "userId",
                "may contain only A-Z a-z 0-9 . _ - @ : +",
            ));
        }
        // Clients that normalise URLs (RFC 3986 §5.2.4) turn `/users/../tokens` into
        // another path: such a user could be written by one client and never reached by
        // another.
        if raw == "." || raw == ".." {
            return Err(invalid("userId", "must not be . or .."));
        }
        // The user id travels in plain text in every KMS call's encryption context, so in
        // CloudTrail: it must be an opaque id, and an email address is personal data.
        if looks_like_an_email(raw) {
            return Err(invalid(
                "userId",
                "must be an opaque id, not an email address",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `local@domain.tld`: one `@` with text before it, and after it a domain with a dot that
/// neither starts nor ends it.
fn looks_like_an_email(raw: &str) -> bool {
    raw.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    })
}

/// A provider name such as `google`: 1 to 32 characters of `a-z 0-9 _ -`, starting with a letter.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProviderName(String);

impl ProviderName {
    pub const MAX_LEN: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(invalid("provider", "must be 1 to 32 characters"));
        }
        let starts_with_letter = raw.starts_with(|c: char| c.is_ascii_lowercase());
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c);
        if !starts_with_letter || !raw.chars().all(allowed) {
            return Err(invalid(
                "provider",
                "must start with a-z and contain only a-z 0-9 _ -",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.0)
            }
        }
    )*};
}
display_as_str!(UserId, ProviderName, Scope);

/// One OAuth scope (RFC 6749 §3.3 `scope-token`): 1 to 512 printable ASCII characters,
/// no space, `"` or `\`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    pub const MAX_LEN: usize = 512;
    /// Most scopes one token may carry.
    pub const MAX_COUNT: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(invalid("scopes", "must each be 1 to 512 characters"));
        }
        let allowed = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
        if !raw.bytes().all(allowed) {
            return Err(invalid("scopes", "must be RFC 6749 scope tokens"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Parses a list, dropping duplicates and keeping the first-seen order.
    pub fn parse_list<S: AsRef<str>>(raw: &[S]) -> Result<Vec<Self>, InvalidInput> {
        if raw.len() > Self::MAX_COUNT {
            return Err(invalid("scopes", "may hold at most 100 scopes"));
        }
        let mut scopes: Vec<Scope> = Vec::with_capacity(raw.len());
        for s in raw {
            let scope = Self::parse(s.as_ref())?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(scopes)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Largest access or refresh token accepted (Microsoft's can be several KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

macro_rules! secret_token {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            pub fn parse(raw: String) -> Result<Self, InvalidInput> {
                if raw.is_empty() || raw.len() > MAX_TOKEN_LEN {
                    return Err(invalid($field, "must be 1 to 16384 bytes"));
                }
                // RFC 6749 (appendix A.12, A.13): tokens are VSCHAR, printable ASCII.
                if !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                    return Err(invalid($field, "must be printable ASCII"));
                }
                Ok(Self(SecretString::from(raw)))
            }

            /// The token itself: call only where it is sealed, sent to its owner or to the provider.
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }
    };
}

secret_token!(
    /// An OAuth access token. Redacted in `Debug`, zeroized on drop.
    AccessToken,
    "accessToken"
);
secret_token!(
    /// An OAuth refresh token. Redacted in `Debug`, zeroized on drop.
    RefreshToken,
    "refreshToken"
);

/// Which grant: one user's grant with one provider. The one name of a grant from the
/// request path down to the SQL binds and the KMS encryption context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantKey {
    pub user: UserId,
    pub provider: ProviderName,
}

impl GrantKey {
    pub fn new(user: UserId, provider: ProviderName) -> Self {
        Self { user, provider }
    }
}

/// A grant's lifecycle: a dead grant is kept (never deleted by a failed refresh) but not
/// served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    Active,
    ReauthorizationRequired,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::ReauthorizationRequired => "reauthorization_required",
        }
    }
}

/// What a stored grant says of itself in the clear: everything but its tokens.
#[derive(Debug, Clone)]
pub struct GrantState {
    pub status: TokenStatus,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<Scope>,
    pub has_refresh_token: bool,
    /// Failed refreshes since the last one that worked.
    pub refresh_failures: u32,
    /// No refresh is tried before this (a cool-down after a transient failure).
    pub retry_after: Option<DateTime<Utc>>,
    /// When the keeper refreshes it (`None`: never).
    pub next_refresh_at: Option<DateTime<Utc>>,
}

/// How a grant is doing, as callers and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantHealth {
    Active,
    /// Refreshes have been failing transiently since the last one that worked.
    Degraded {
        consecutive_failures: u32,
        last_error: Option<String>,
        next_retry_at: Option<DateTime<Utc>>,
    },
    /// Dead: only the user's consent brings it back. `reason`: the provider's error
    /// (`invalid_grant`), or `missing_refresh_token` for an expired grant that has none.
    ReauthorizationRequired {
        reason: String,
    },
}

impl GrantHealth {
    /// The state's name: `active`, `degraded` or `reauthorization_required`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded { .. } => "degraded",
            Self::ReauthorizationRequired { .. } => "reauthorization_required",
        }
    }
}

/// A grant's state and health, without its tokens.
#[derive(Debug, Clone)]
pub struct GrantSummary {
    pub grant: GrantKey,
    pub health: GrantHealth,
    pub scopes: Vec<Scope>,
    pub expires_at: DateTime<Utc>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
}

/// A token as callers hand it in and get it back, decrypted.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<Scope>,
}

/// A stored grant, decrypted, with its status.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub token: TokenSet,
    pub status: TokenStatus,
}

/// An access token ready to hand out.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub access_token: AccessToken,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<Scope>,
}

impl From<TokenSet> for AccessGrant {
    fn from(token: TokenSet) -> Self {
        Self {
            access_token: token.access_token,
            expires_at: token.expires_at,
            scopes: token.scopes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_bounded_and_restricted() {
        assert!(UserId::parse("user-1").is_ok());
        assert!(UserId::parse("google-oauth2:1234567890").is_ok());
        assert!(UserId::parse("tenant@42").is_ok());
        assert!(UserId::parse("user-1@example.com").is_err());
        assert!(UserId::parse("a.b+c@mail.example.org").is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(129)).is_err());
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
        assert!(UserId::parse("a/b").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("é").is_err());
        assert!(UserId::parse(".").is_err());
        assert!(UserId::parse("..").is_err());
        assert!(UserId::parse("...").is_ok());
        assert!(UserId::parse(".a").is_ok());
    }

    #[test]
    fn provider_names_are_lowercase_identifiers() {
        assert!(ProviderName::parse("google").is_ok());
        assert!(ProviderName::parse("ms-entra_2").is_ok());
        assert!(ProviderName::parse("Google").is_err());
        assert!(ProviderName::parse("1google").is_err());
        assert!(ProviderName::parse(&"g".repeat(33)).is_err());
    }

    #[test]
    fn scopes_follow_rfc6749_and_deduplicate() {
        let list = Scope::parse_list(&["openid", "email", "openid"]).unwrap();
        assert_eq!(list.len(), 2);
        assert!(Scope::parse("has space").is_err());
        assert!(Scope::parse("quote\"").is_err());
        assert!(Scope::parse("https://www.googleapis.com/auth/gmail.readonly").is_ok());
        let too_many: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
        assert!(Scope::parse_list(&too_many).is_err());
    }

    #[test]
    fn tokens_redact_themselves_in_debug() {
        let access = AccessToken::parse("ya29.secret-access".into()).unwrap();
        let refresh = RefreshToken::parse("1//secret-refresh".into()).unwrap();
        assert_eq!(format!("{access:?}"), "AccessToken([REDACTED])");
        assert_eq!(format!("{refresh:?}"), "RefreshToken([REDACTED])");
        let set = TokenSet {
            access_token: access,
            refresh_token: Some(refresh),
            expires_at: DateTime::from_timestamp_millis(0).unwrap(),
            scopes: vec![],
        };
        let debug = format!("{set:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("[REDACTED]"));
    }

    #[test]
    fn tokens_are_bounded() {
        assert!(AccessToken::parse(String::new()).is_err());
        assert!(AccessToken::parse("a".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert!(AccessToken::parse("a\nb".into()).is_err());
        assert!(AccessToken::parse("jeton-é".into()).is_err());
        assert!(AccessToken::parse("ya29.a0Af-_~+/= x".into()).is_ok());
    }
}
