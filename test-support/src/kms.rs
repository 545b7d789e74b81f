//! Scratch KMS keys in LocalStack: one per test, scheduled for deletion when its guard goes.

use anyhow::Context;
use aws_sdk_kms::types::KeySpec;

use crate::cleanup::OnDrop;
use crate::env::{kms_endpoint, set_aws_defaults};

/// KMS never deletes a key at once: it deletes it after a waiting period of 7 to 30 days,
/// and a key pending deletion can no longer be used. Scheduling the deletion with the
/// shortest period is the strongest "delete" KMS (and LocalStack, which mimics it) offers.
pub const DELETION_WINDOW_DAYS: i32 = 7;

/// A KMS client for `endpoint`, with [`set_aws_defaults`] applied.
pub async fn kms_client(endpoint: &str) -> aws_sdk_kms::Client {
    set_aws_defaults();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_kms::Client::new(&sdk)
}

/// A KMS client for LocalStack ([`kms_endpoint`]).
pub async fn kms_admin() -> aws_sdk_kms::Client {
    kms_client(&kms_endpoint()).await
}

/// A symmetric KMS key of its own (so that a test that disables its key disturbs no
/// other), scheduled for deletion when this guard is dropped, also when the test fails.
#[derive(Debug)]
pub struct TestKmsKey {
    arn: String,
    _delete: OnDrop,
}

impl TestKmsKey {
    /// A new key in LocalStack ([`kms_endpoint`]). Panics if LocalStack cannot be reached:
    /// this is for tests.
    pub async fn create() -> Self {
        Self::create_at(&kms_endpoint(), "token-store test key")
            .await
            .expect("creating a KMS key in LocalStack (is it running? see README)")
    }

    /// A new key at `endpoint`.
    pub async fn create_at(endpoint: &str, description: &str) -> anyhow::Result<Self> {
        let kms = kms_client(endpoint).await;
        let created = kms
            .create_key()
            .key_spec(KeySpec::SymmetricDefault)
            .description(description)
            .send()
            .await
            .with_context(|| {
                format!("creating a KMS key at {endpoint} (is LocalStack running?)")
            })?;
        let arn = created
            .key_metadata()
            .and_then(|m| m.arn())
            .context("CreateKey returned no key ARN")?
            .to_owned();
        let delete = {
            let (endpoint, arn) = (endpoint.to_owned(), arn.clone());
            OnDrop::new(
                format!("scheduling the deletion of KMS key {arn}"),
                move || async move {
                    // A client of its own: the test's clients belong to the test's runtime.
                    kms_client(&endpoint)
                        .await
                        .schedule_key_deletion()
                        .key_id(&arn)
                        .pending_window_in_days(DELETION_WINDOW_DAYS)
                        .send()
                        .await?;
                    Ok(())
                },
            )
        };
        Ok(Self {
            arn,
            _delete: delete,
        })
    }

    /// The key's ARN, which the service takes as `[kms] key_id`.
    pub fn arn(&self) -> &str {
        &self.arn
    }
}
