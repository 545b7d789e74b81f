//! End to end: the real binary, `migrate` then `serve`, over real HTTP, stopped by SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use test_support::provider::{FakeProvider, Mode};
use test_support::{
    kms_endpoint, token_body, Api, BinaryInstance, TestApp, TestDatabase, TestKmsKey, FULL_KEY,
};

const BIN: &str = env!("CARGO_BIN_EXE_token-store");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_binary_migrates_serves_and_stops_cleanly_on_sigterm() {
    let key = TestKmsKey::create().await;
    let database = TestDatabase::create_empty("binary").await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("token-store.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
log_format = "json"

[database]
url = "{database_url}"

[kms]
key_id = "{key_id}"
endpoint_url = "{endpoint}"

[[clients]]
name = "e2e"
key_sha256 = "{hash}"
permissions = ["read", "write", "revoke", "read_refresh_token"]
"#,
            database_url = database.url(),
            key_id = key.arn(),
            endpoint = kms_endpoint(),
            hash = token_store::auth::key_hash_hex(FULL_KEY),
        ),
    )
    .unwrap();

    let migrate = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let log_path = dir.path().join("serve.log");
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let api = Api::new(
        reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}"),
        Some(FULL_KEY),
    );
    let started = Instant::now();
    loop {
        if let Some(r) = api.try_healthz().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the service did not start"
        );
        assert!(
            serve.try_wait().unwrap().is_none(),
            "the service exited early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let body = token_body("e2e");
    let put = api.put_token("e2e-user", "google", &body).await;
    assert_eq!(put.status(), 204);
    let got: Value = api
        .get_token("e2e-user", "google")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["accessToken"], body["accessToken"]);
    assert_eq!(got["refreshToken"], body["refreshToken"]);
    let deleted = api.delete_token("e2e-user", "google").await;
    assert_eq!(deleted.status(), 204);
    let gone = api.get_token("e2e-user", "google").await;
    assert_eq!(gone.status(), 404);

    let kill = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("shutdown signal received"), "{logs}");
    let first: Value = serde_json::from_str(logs.lines().next().unwrap()).expect("JSON log lines");
    assert!(first.get("level").is_some());
    for secret in [&body["accessToken"], &body["refreshToken"]] {
        assert!(
            !logs.contains(secret.as_str().unwrap()),
            "a token appeared in the service's logs"
        );
    }
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_a_kms_key() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("token-store.toml");
    std::fs::write(
        &config_path,
        "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/postgres\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env_remove("TOKEN_STORE_KMS__KEY_ID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no KMS key configured"), "{stderr}");
}

#[tokio::test]
async fn a_killed_lock_holder_releases_the_lock_and_another_instance_refreshes() {
    let provider = FakeProvider::start().await;
    provider.set_mode(Mode::Slow(Duration::from_secs(6), &Mode::Success));
    let survivor = TestApp::spawn_with_provider(&provider).await;
    let mut body = token_body("killed");
    body["expiresAt"] = serde_json::json!(chrono::Utc::now().timestamp_millis() - 60_000);
    survivor.put_token("alice", "google", &body).await;

    let mut doomed = BinaryInstance::start(
        Path::new(BIN),
        &survivor,
        &format!(
            "[refresh]\nprovider_timeout_ms = 8000\nlock_timeout_ms = 10000\n\n{}",
            provider.toml("google")
        ),
    )
    .await;
    let doomed_api = doomed.api.clone();

    // The request fails when its instance is killed, and the task with it.
    let pending = tokio::spawn(async move { doomed_api.access_token("alice", "google").await });
    provider.wait_for_calls(1).await;
    let advisory_locks = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_locks where locktype = 'advisory' and granted \
             and database = (select oid from pg_database where datname = current_database())",
        )
        .fetch_one(&survivor.db)
        .await
        .unwrap()
    };
    assert_eq!(
        advisory_locks().await,
        1,
        "the doomed instance holds the refresh lock"
    );

    doomed.kill(); // SIGKILL
    assert!(pending.await.is_err(), "the killed instance never answered");

    let released = Instant::now();
    while advisory_locks().await > 0 {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "the lock outlived its holder"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    provider.set_mode(Mode::Success);
    let response = survivor.access_token("alice", "google").await;
    assert_eq!(response.status(), 200);
    let fresh: Value = response.json().await.unwrap();
    assert!(fresh["accessToken"]
        .as_str()
        .unwrap()
        .starts_with("ya29.fresh-"));
    assert_eq!(provider.token_calls(), 2);
    let stored: Value = survivor
        .get_token("alice", "google")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["accessToken"], fresh["accessToken"]);
}

#[tokio::test]
async fn the_served_process_backs_its_heap_without_transparent_huge_pages() {
    let app = TestApp::spawn().await;
    let instance = BinaryInstance::start(Path::new(BIN), &app, "").await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", instance.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled");
    assert_eq!(thp.trim(), "0", "{status}");
}
