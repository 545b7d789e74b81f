//! What token-store's integration tests (`tests/api/`) and its benchmark (`bench/`) share.
//!
//! - [`TestApp`]: the real `Application` served on a free loopback port, on a database and a
//!   KMS key of its own, with one method per HTTP route ([`Api`]).
//! - [`FakeProvider`]: a real HTTP server on loopback that behaves like Google's token and
//!   revoke endpoints and counts its calls.
//! - [`TestDatabase`] and [`TestKmsKey`]: a scratch PostgreSQL database and a scratch
//!   LocalStack KMS key, removed when the guard is dropped, also when a test fails
//!   ([`OnDrop`] says how).
//! - [`BinaryInstance`]: the real binary in its own process on a [`TestApp`]'s database and
//!   key, to be killed with SIGKILL.
//! - [`WebhookReceiver`]: a real HTTP server on loopback that verifies webhook signatures.
//! - [`env`]: where PostgreSQL and LocalStack are, and the AWS settings that reach LocalStack.
//!
//! It depends on the `token-store` library, so the service's integration tests may use it
//! (as a dev-dependency) but its unit tests may not.

pub mod app;
pub mod binary;
pub mod cleanup;
pub mod database;
pub mod env;
pub mod fixtures;
pub mod kms;
pub mod provider;
pub mod webhook;

pub use app::{
    app_config, captured_logs, init_process, Api, TestApp, FULL_KEY, READ_KEY, RW_KEY, WRITE_KEY,
};
pub use binary::BinaryInstance;
pub use cleanup::OnDrop;
pub use database::TestDatabase;
pub use env::{database_server_url, kms_endpoint, set_aws_defaults};
pub use fixtures::{assert_problem, expired_body, expiring_body, token_body};
pub use kms::{kms_admin, TestKmsKey};
pub use provider::{FakeProvider, Mode};
pub use webhook::{Received, ReceiverMode, WebhookReceiver};
