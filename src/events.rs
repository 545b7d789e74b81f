//! What happened to a grant, as its webhook says it: one event per change of a grant's
//! state, written by the vault in the transaction of the change (the outbox) and sent by
//! [`crate::webhooks`]. Events carry the grant's name and state, never a token.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::domain::GrantKey;

/// A change of a grant's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantEvent {
    /// Stored: a new grant, or one replaced by a new consent.
    Connected,
    /// A refresh failed transiently after the last one worked.
    Degraded {
        consecutive_failures: u32,
        last_error: String,
        next_retry_at: DateTime<Utc>,
    },
    /// The provider said the grant is dead; only a new consent brings it back.
    ReauthorizationRequired { reason: String },
    /// A degraded grant refreshed again, or a dead one was stored again.
    Recovered,
    /// Deleted, after revoking it at the provider (`provider_confirmed`: the provider said
    /// it revoked it).
    Revoked { provider_confirmed: bool },
}

impl GrantEvent {
    /// The event's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connected => "grant.connected",
            Self::Degraded { .. } => "grant.degraded",
            Self::ReauthorizationRequired { .. } => "grant.reauthorization_required",
            Self::Recovered => "grant.recovered",
            Self::Revoked { .. } => "grant.revoked",
        }
    }

    /// The webhook body (Standard Webhooks' `{type, timestamp, data}`).
    pub fn payload(&self, grant: &GrantKey, at: DateTime<Utc>) -> Value {
        let mut data = json!({
            "userId": grant.user.as_str(),
            "provider": grant.provider.as_str(),
        });
        let extra = match self {
            Self::Connected | Self::Recovered => json!({}),
            Self::Degraded {
                consecutive_failures,
                last_error,
                next_retry_at,
            } => json!({
                "consecutiveFailures": consecutive_failures,
                "lastErrorCode": last_error,
                "nextRetryAt": timestamp(*next_retry_at),
            }),
            Self::ReauthorizationRequired { reason } => json!({ "reason": reason }),
            Self::Revoked { provider_confirmed } => {
                json!({ "providerConfirmed": provider_confirmed })
            }
        };
        if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        json!({
            "type": self.kind(),
            "timestamp": timestamp(at),
            "data": data,
        })
    }
}

/// A new event id (the `webhook-id`: the same for every attempt at delivering it).
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::new_v4().simple())
}

/// RFC 3339 in UTC, to the millisecond.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ProviderName, UserId};

    #[test]
    fn payloads_name_the_grant_and_its_state_and_nothing_else() {
        let grant = GrantKey::new(
            UserId::parse("u-1").unwrap(),
            ProviderName::parse("google").unwrap(),
        );
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let degraded = GrantEvent::Degraded {
            consecutive_failures: 2,
            last_error: "http_503".into(),
            next_retry_at: at,
        }
        .payload(&grant, at);
        assert_eq!(
            degraded,
            json!({
                "type": "grant.degraded",
                "timestamp": "2027-01-15T08:00:00.000Z",
                "data": {
                    "userId": "u-1",
                    "provider": "google",
                    "consecutiveFailures": 2,
                    "lastErrorCode": "http_503",
                    "nextRetryAt": "2027-01-15T08:00:00.000Z",
                },
            })
        );
        let revoked = GrantEvent::Revoked {
            provider_confirmed: true,
        }
        .payload(&grant, at);
        assert_eq!(revoked["type"], "grant.revoked");
        assert_eq!(revoked["data"]["providerConfirmed"], true);
        let dead = GrantEvent::ReauthorizationRequired {
            reason: "invalid_grant".into(),
        };
        assert_eq!(dead.payload(&grant, at)["data"]["reason"], "invalid_grant");
    }
}
