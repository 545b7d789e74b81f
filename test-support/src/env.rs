//! Where the tests' PostgreSQL server and LocalStack are, and the AWS settings that reach
//! LocalStack.

use std::sync::Once;

/// The variable that names the PostgreSQL server the tests and the benchmark create their
/// databases on. Not a `TOKEN_STORE_*` name: the service reads every such variable as
/// configuration, and the binaries under test inherit the environment.
pub const DATABASE_SERVER_URL_VAR: &str = "TS_TEST_DATABASE_URL";

/// The server when [`DATABASE_SERVER_URL_VAR`] is not set.
pub const DEFAULT_DATABASE_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// Where LocalStack answers when `AWS_ENDPOINT_URL` is not set.
pub const DEFAULT_KMS_ENDPOINT: &str = "http://127.0.0.1:4566";

/// The PostgreSQL server, without a database name: `TS_TEST_DATABASE_URL`, else
/// [`DEFAULT_DATABASE_SERVER_URL`].
pub fn database_server_url() -> String {
    std::env::var(DATABASE_SERVER_URL_VAR)
        .unwrap_or_else(|_| DEFAULT_DATABASE_SERVER_URL.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// Where LocalStack answers: `AWS_ENDPOINT_URL` (`scripts/localstack.sh env` exports it),
/// else [`DEFAULT_KMS_ENDPOINT`].
pub fn kms_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| DEFAULT_KMS_ENDPOINT.to_owned())
}

/// Test credentials and a region for the AWS SDK's standard chain, each unless the
/// environment already has one. LocalStack does not check signatures, so the chain only
/// needs something; the service's binaries started by a test or the benchmark inherit them.
///
/// Idempotent. It changes the process's environment, so call it before other threads read
/// it: the benchmark does first thing in `main`, [`TestApp`](crate::TestApp) and the other
/// helpers before they make an AWS client.
pub fn set_aws_defaults() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (name, value) in [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ] {
            if std::env::var_os(name).is_none() {
                std::env::set_var(name, value);
            }
        }
    });
}
