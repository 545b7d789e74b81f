//! `token-store rewrap`: every data key moves to another KMS key; nothing is lost.

use std::process::Command;

use serde_json::Value;
use test_support::{kms_endpoint, token_body, TestApp, TestKmsKey};
use token_store::crypto::KmsOperation;
use token_store::rewrap::{rewrap_all, RewrapOptions};

async fn key_ids(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("select distinct kms_key_id from integration_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

/// A fresh instance (cold cache) on `app`'s database, whose configured key is `key_id`.
async fn instance_with_key(app: &TestApp, key_id: &str) -> TestApp {
    app.sibling_with(|config| config.kms.key_id = Some(key_id.to_owned()))
        .await
}

async fn assert_all_read_back(app: &TestApp, expected: &[(String, Value)]) {
    for (user, body) in expected {
        let response = app.get_token(user, "google").await;
        assert_eq!(response.status(), 200, "{user}");
        let got: Value = response.json().await.unwrap();
        assert_eq!(got["accessToken"], body["accessToken"], "{user}");
        assert_eq!(got["refreshToken"], body["refreshToken"], "{user}");
    }
}

#[tokio::test]
async fn rewrap_moves_every_key_and_tokens_read_back_after_the_old_key_is_disabled() {
    let app = TestApp::spawn().await;
    let mut stored = Vec::new();
    for i in 0..25 {
        let user = format!("user-{i}");
        let body = token_body(&user);
        app.put_token(&user, "google", &body).await;
        stored.push((user, body));
    }
    let key = TestKmsKey::create().await;
    let new_key = key.arn().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("token-store.toml");
    std::fs::write(
        &config_path,
        format!(
            "[database]\nurl = \"{}\"\n\n[kms]\nkey_id = \"{}\"\nendpoint_url = \"{}\"\n",
            app.database_url,
            app.key_id,
            kms_endpoint()
        ),
    )
    .unwrap();
    let rewrap = || {
        Command::new(env!("CARGO_BIN_EXE_token-store"))
            .args([
                "rewrap",
                "--batch-size",
                "10",
                "--to-key",
                &new_key,
                "--config",
            ])
            .arg(&config_path)
            .output()
            .unwrap()
    };

    let first = rewrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("pass 1: 25 rows to rewrap"), "{stdout}");
    assert!(
        stdout.contains("10/25 rows processed"),
        "progress per batch: {stdout}"
    );
    assert!(stdout.contains("25 rewrapped"), "{stdout}");
    assert_eq!(key_ids(&app).await, vec![new_key.clone()]);
    assert_eq!(app.kms_calls(KmsOperation::GenerateDataKey).await, 25.0);

    app.disable_kms_key().await;
    let reader = instance_with_key(&app, &new_key).await;
    assert_all_read_back(&reader, &stored).await;
    assert_eq!(reader.kms_calls(KmsOperation::Decrypt).await, 25.0);

    // Idempotent: a second run finds nothing to do.
    let second = rewrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{stdout}");
    assert!(stdout.contains("0 rewrapped"), "{stdout}");
}

#[tokio::test]
async fn rewrap_does_not_lose_rows_written_concurrently() {
    let app = TestApp::spawn().await;
    let mut stored = Vec::new();
    for i in 0..60 {
        let user = format!("user-{i}");
        let body = token_body(&user);
        app.put_token(&user, "google", &body).await;
        stored.push((user, body));
    }
    let key = TestKmsKey::create().await;
    let new_key = key.arn().to_owned();
    let vault = token_store::startup::job_vault(&app.config(), new_key.clone())
        .await
        .unwrap();
    let options = RewrapOptions {
        batch_size: 5,
        concurrency: 2,
        max_passes: 1,
    };

    // The service keeps writing (under the old key) while the rewrap runs.
    let writes = async {
        let mut last = Vec::new();
        for round in 0..3 {
            for i in (0..60).step_by(3) {
                let user = format!("user-{i}");
                let body = token_body(&format!("{user}-round-{round}"));
                assert_eq!(app.put_token(&user, "google", &body).await.status(), 204);
                last.push((user, body));
            }
        }
        last
    };
    let (report, last_writes) = tokio::join!(rewrap_all(&vault, &new_key, options, |_| {}), writes);
    let report = report.unwrap();
    assert!(report.rewrapped > 0);
    for (user, body) in last_writes {
        let slot = stored.iter_mut().find(|(u, _)| *u == user).unwrap();
        slot.1 = body;
    }

    // Every row holds its latest write and opens (old key still enabled here).
    let reader = instance_with_key(&app, &app.key_id).await;
    assert_all_read_back(&reader, &stored).await;

    // The next run converges; then the old key can go.
    let report = rewrap_all(&vault, &new_key, RewrapOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.remaining, 0);
    app.disable_kms_key().await;
    let reader = instance_with_key(&app, &new_key).await;
    assert_all_read_back(&reader, &stored).await;
}
