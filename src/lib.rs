//! `token-store`: keeps third-party OAuth tokens per `(user_id, provider)`, sealed under a
//! per-row AWS KMS data key, and serves them over HTTP. See ARCHITECTURE.md.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod domain;
pub mod events;
pub mod http;
pub mod keeper;
pub mod lookups;
pub mod metrics;
pub mod providers;
pub mod refresh;
pub mod revoke;
pub mod rewrap;
pub mod rowcache;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod vault;
pub mod webhooks;
