//! Tokens at rest: sealed, bound to their row and field, keys bound to their row's context.

use std::collections::HashMap;

use aws_sdk_kms::primitives::Blob;
use serde_json::Value;
use sqlx::Row;

use test_support::{token_body, TestApp};
use token_store::crypto::{KmsOperation, KmsOutcome};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_column_holds_a_token_as_text_or_bytes() {
    let app = TestApp::spawn().await;
    let body = token_body("at-rest");
    app.put_token("user-1", "google", &body).await;
    let access = body["accessToken"].as_str().unwrap();
    let refresh = body["refreshToken"].as_str().unwrap();

    // Every column of the row, as PostgreSQL's own text rendering.
    let row = sqlx::query("select t::text as row_text from integration_tokens t")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let text: String = row.get("row_text");
    assert!(text.contains("user-1"), "the query read the row");
    for secret in [access, refresh] {
        assert!(
            !text.contains(secret),
            "plaintext token found in the row text"
        );
        assert!(
            !text.contains(&hex::encode(secret)),
            "hex of a token found in the row text"
        );
    }

    // And the raw bytes of every bytea column.
    let row = sqlx::query(
        "select wrapped_data_key, access_token_ct, refresh_token_ct from integration_tokens",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    for column in ["wrapped_data_key", "access_token_ct", "refresh_token_ct"] {
        let bytes: Vec<u8> = row.get(column);
        assert!(!bytes.is_empty());
        for secret in [access, refresh] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{column} holds a token"
            );
        }
    }
    let access_ct: Vec<u8> = row.get("access_token_ct");
    assert_eq!(access_ct[0], 1, "format version byte");
    assert_eq!(access_ct.len(), 1 + 12 + access.len() + 16);
}

async fn copy_column(app: &TestApp, column: &str, from: (&str, &str), to: (&str, &str)) {
    sqlx::query(&format!(
        "update integration_tokens set {column} = (select {column} from integration_tokens \
         where user_id = $1 and provider = $2) where user_id = $3 and provider = $4"
    ))
    .bind(from.0)
    .bind(from.1)
    .bind(to.0)
    .bind(to.1)
    .execute(&app.db)
    .await
    .unwrap();
}

async fn assert_read_fails_without_leaking(
    app: &TestApp,
    user: &str,
    provider: &str,
    secrets: &[&str],
) {
    let response = app.get_token(user, provider).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 500, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "internal");
    for secret in secrets {
        assert!(!text.contains(secret), "a token leaked into the error body");
    }
}

#[tokio::test]
async fn a_ciphertext_copied_to_another_row_fails_to_open() {
    let app = TestApp::spawn().await;
    let a = token_body("row-a");
    let b = token_body("row-b");
    app.put_token("alice", "google", &a).await;
    app.put_token("bob", "google", &b).await;

    copy_column(
        &app,
        "access_token_ct",
        ("alice", "google"),
        ("bob", "google"),
    )
    .await;

    let secrets = [
        a["accessToken"].as_str().unwrap(),
        b["accessToken"].as_str().unwrap(),
    ];
    assert_read_fails_without_leaking(&app, "bob", "google", &secrets).await;
    // The source row still reads.
    assert_eq!(app.get_token("alice", "google").await.status(), 200);
}

#[tokio::test]
async fn a_ciphertext_copied_to_another_field_fails_to_open() {
    let app = TestApp::spawn().await;
    let a = token_body("field");
    app.put_token("alice", "google", &a).await;
    sqlx::query("update integration_tokens set refresh_token_ct = access_token_ct")
        .execute(&app.db)
        .await
        .unwrap();
    let secrets = [
        a["accessToken"].as_str().unwrap(),
        a["refreshToken"].as_str().unwrap(),
    ];
    assert_read_fails_without_leaking(&app, "alice", "google", &secrets).await;
}

#[tokio::test]
async fn a_whole_envelope_copied_to_another_row_is_refused_by_kms() {
    let app = TestApp::spawn().await;
    let a = token_body("whole-a");
    app.put_token("alice", "google", &a).await;
    app.put_token("bob", "google", &token_body("whole-b")).await;
    for column in ["wrapped_data_key", "access_token_ct", "refresh_token_ct"] {
        copy_column(&app, column, ("alice", "google"), ("bob", "google")).await;
    }
    // A fresh instance, so the key is not in any cache and KMS must unwrap it.
    let cold = app.sibling().await;
    assert_read_fails_without_leaking(
        &cold,
        "bob",
        "google",
        &[a["accessToken"].as_str().unwrap()],
    )
    .await;
    assert_eq!(
        cold.metric(
            "token_store_kms_requests_total",
            &[
                ("operation", KmsOperation::Decrypt.as_str()),
                ("outcome", KmsOutcome::Refused.as_str())
            ]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_whole_envelope_copied_to_another_row_is_refused_on_a_warm_instance_too() {
    let app = TestApp::spawn().await;
    let a = token_body("warm-a");
    app.put_token("alice", "google", &a).await;
    app.put_token("bob", "google", &token_body("warm-b")).await;
    // Both keys are cached here (stored by this instance, then read).
    for user in ["alice", "bob"] {
        assert_eq!(app.get_token(user, "google").await.status(), 200);
    }
    for column in ["wrapped_data_key", "access_token_ct", "refresh_token_ct"] {
        copy_column(&app, column, ("alice", "google"), ("bob", "google")).await;
    }
    // alice's key is in the cache, but under alice's row: bob's row must ask KMS, which
    // refuses it under bob's encryption context.
    assert_read_fails_without_leaking(&app, "bob", "google", &[a["accessToken"].as_str().unwrap()])
        .await;
    assert_eq!(
        app.metric(
            "token_store_kms_requests_total",
            &[
                ("operation", KmsOperation::Decrypt.as_str()),
                ("outcome", KmsOutcome::Refused.as_str())
            ]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_wrapped_key_decrypts_only_under_its_own_rows_context() {
    let app = TestApp::spawn().await;
    app.put_token("alice", "google", &token_body("ctx")).await;
    let (key_id, wrapped): (String, Vec<u8>) =
        sqlx::query_as("select kms_key_id, wrapped_data_key from integration_tokens")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let context = |user: &str, provider: &str| {
        HashMap::from([
            ("purpose".to_owned(), "integration-token".to_owned()),
            ("user_id".to_owned(), user.to_owned()),
            ("provider".to_owned(), provider.to_owned()),
        ])
    };
    let decrypt = |ctx: Option<HashMap<String, String>>| {
        app.kms
            .decrypt()
            .key_id(&key_id)
            .ciphertext_blob(Blob::new(wrapped.clone()))
            .set_encryption_context(ctx)
            .send()
    };

    let own = decrypt(Some(context("alice", "google"))).await.unwrap();
    assert_eq!(own.plaintext().unwrap().as_ref().len(), 32);

    for other in [
        Some(context("bob", "google")),
        Some(context("alice", "microsoft")),
        None,
    ] {
        let err = decrypt(other).await.unwrap_err();
        let code = err
            .as_service_error()
            .and_then(|e| aws_sdk_kms::error::ProvideErrorMetadata::code(e))
            .map(str::to_owned);
        assert_eq!(code.as_deref(), Some("InvalidCiphertextException"));
    }
}

#[tokio::test]
async fn every_store_gets_its_own_data_key() {
    let app = TestApp::spawn().await;
    app.put_token("alice", "google", &token_body("k1")).await;
    let first: Vec<u8> = sqlx::query_scalar("select wrapped_data_key from integration_tokens")
        .fetch_one(&app.db)
        .await
        .unwrap();
    app.put_token("alice", "google", &token_body("k2")).await;
    app.put_token("bob", "google", &token_body("k3")).await;
    let keys: Vec<Vec<u8>> = sqlx::query_scalar("select wrapped_data_key from integration_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        !keys.contains(&first),
        "a new store must get a new data key"
    );
    assert_ne!(keys[0], keys[1]);
    assert_eq!(app.kms_calls(KmsOperation::GenerateDataKey).await, 3.0);
}
