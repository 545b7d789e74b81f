//! The KMS calls of the envelope: generate a data key, unwrap one, check the key is usable.
//! Each call is counted by operation and outcome; plaintext keys leave here zeroizing.

use std::collections::HashMap;

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyState};
use zeroize::Zeroizing;

use super::{CryptoError, WrappedKey};
use crate::domain::GrantKey;
use crate::metrics::Metrics;

#[derive(Clone)]
pub(super) struct Kms {
    client: aws_sdk_kms::Client,
    key_id: String,
    metrics: Metrics,
}

impl Kms {
    pub(super) fn new(client: aws_sdk_kms::Client, key_id: String, metrics: Metrics) -> Self {
        Self {
            client,
            key_id,
            metrics,
        }
    }

    /// `GenerateDataKey` (AES_256) under the configured key and the row's encryption context.
    pub(super) async fn generate_data_key(
        &self,
        grant: &GrantKey,
    ) -> Result<(WrappedKey, Zeroizing<Vec<u8>>), CryptoError> {
        let result = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(encryption_context(grant)))
            .send()
            .await;
        let output = self.record(KmsOperation::GenerateDataKey, result)?;
        let plaintext = Zeroizing::new(output.plaintext.map(Blob::into_inner).unwrap_or_default());
        let blob = output
            .ciphertext_blob
            .map(Blob::into_inner)
            .unwrap_or_default();
        if plaintext.len() != 32 || blob.is_empty() {
            return Err(CryptoError::KmsUnavailable(anyhow::anyhow!(
                "GenerateDataKey returned no usable key"
            )));
        }
        let key_id = output.key_id.unwrap_or_else(|| self.key_id.clone());
        Ok((WrappedKey { key_id, blob }, plaintext))
    }

    /// `Decrypt` of a wrapped data key under the key that wrapped it and the row's context.
    pub(super) async fn decrypt(
        &self,
        wrapped: &WrappedKey,
        grant: &GrantKey,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let result = self
            .client
            .decrypt()
            .key_id(&wrapped.key_id)
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .set_encryption_context(Some(encryption_context(grant)))
            .send()
            .await;
        let output = self.record(KmsOperation::Decrypt, result)?;
        Ok(Zeroizing::new(
            output.plaintext.map(Blob::into_inner).unwrap_or_default(),
        ))
    }

    /// `ReEncrypt` of a wrapped data key to another KMS key, under the same encryption
    /// context: the plaintext key never leaves KMS.
    pub(super) async fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        grant: &GrantKey,
        to_key_id: &str,
    ) -> Result<WrappedKey, CryptoError> {
        let context = encryption_context(grant);
        let result = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            // LocalStack (and good practice) wants the source key named explicitly.
            .source_key_id(&wrapped.key_id)
            .destination_key_id(to_key_id)
            .set_source_encryption_context(Some(context.clone()))
            .set_destination_encryption_context(Some(context))
            .send()
            .await;
        let output = self.record(KmsOperation::ReEncrypt, result)?;
        let blob = output
            .ciphertext_blob
            .map(Blob::into_inner)
            .unwrap_or_default();
        if blob.is_empty() {
            return Err(CryptoError::KmsUnavailable(anyhow::anyhow!(
                "ReEncrypt returned no ciphertext"
            )));
        }
        let key_id = output.key_id.unwrap_or_else(|| to_key_id.to_owned());
        Ok(WrappedKey { key_id, blob })
    }

    /// The ARN of an enabled key named by id, ARN or alias.
    pub(super) async fn key_arn(&self, key_id: &str) -> Result<String, CryptoError> {
        let result = self.client.describe_key().key_id(key_id).send().await;
        let output = self.record(KmsOperation::DescribeKey, result)?;
        let metadata = output.key_metadata();
        match metadata.map(|m| (m.key_state(), m.arn())) {
            Some((Some(KeyState::Enabled), Some(arn))) => Ok(arn.to_owned()),
            _ => Err(CryptoError::KmsUnavailable(anyhow::anyhow!(
                "the KMS key {key_id} is not enabled"
            ))),
        }
    }

    /// `DescribeKey`: the configured key exists and is enabled.
    pub(super) async fn check_key(&self) -> Result<(), CryptoError> {
        let result = self.client.describe_key().key_id(&self.key_id).send().await;
        let output = self.record(KmsOperation::DescribeKey, result)?;
        match output.key_metadata().map(|m| m.key_state()) {
            Some(Some(KeyState::Enabled)) => Ok(()),
            _ => Err(CryptoError::KmsUnavailable(anyhow::anyhow!(
                "the KMS key is not enabled"
            ))),
        }
    }

    fn record<T, E>(
        &self,
        operation: KmsOperation,
        result: Result<T, SdkError<E>>,
    ) -> Result<T, CryptoError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let outcome = match &result {
            Ok(_) => KmsOutcome::Ok,
            Err(SdkError::ServiceError(_)) => KmsOutcome::Refused,
            Err(_) => KmsOutcome::Unreachable,
        };
        self.metrics
            .kms_calls
            .with_label_values(&[operation.as_str(), outcome.as_str()])
            .inc();
        result.map_err(|err| classify(operation, err))
    }
}

/// `InvalidCiphertext`/`IncorrectKey` mean this wrapped key does not belong under this
/// context or key: an integrity failure, not an outage. Everything else (network, throttling,
/// disabled key, internal errors) is KMS being unavailable to us.
fn classify<E>(operation: KmsOperation, err: SdkError<E>) -> CryptoError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.as_service_error().and_then(|e| e.code()).unwrap_or("");
    match code {
        "InvalidCiphertextException" | "IncorrectKeyException" => CryptoError::KeyRejected,
        _ => CryptoError::KmsUnavailable(
            anyhow::Error::new(err).context(format!("KMS {} failed", operation.as_str())),
        ),
    }
}

/// The KMS operations the service calls: the `operation` label of `token_store_kms_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsOperation {
    GenerateDataKey,
    Decrypt,
    ReEncrypt,
    DescribeKey,
}

impl KmsOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GenerateDataKey => "GenerateDataKey",
            Self::Decrypt => "Decrypt",
            Self::ReEncrypt => "ReEncrypt",
            Self::DescribeKey => "DescribeKey",
        }
    }
}

/// How a KMS call ended: the `outcome` label of `token_store_kms_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsOutcome {
    Ok,
    /// KMS answered with an error.
    Refused,
    /// No answer: network, timeout.
    Unreachable,
}

impl KmsOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
        }
    }
}

pub(super) fn encryption_context(grant: &GrantKey) -> HashMap<String, String> {
    HashMap::from([
        ("purpose".to_owned(), "integration-token".to_owned()),
        ("user_id".to_owned(), grant.user.as_str().to_owned()),
        ("provider".to_owned(), grant.provider.as_str().to_owned()),
    ])
}
