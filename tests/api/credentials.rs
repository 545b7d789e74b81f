//! Database credentials rotate without a restart: the service connects as a member of the
//! least-privilege `token_store_app` role with the user and password a Secrets Manager
//! secret (LocalStack) holds, and follows the secret when it changes.
//!
//! This machine's PostgreSQL trusts loopback connections, so a changed password alone
//! would prove nothing here; the rotation below changes the user (Secrets Manager's
//! alternating-users strategy) and disables the old one, which PostgreSQL does enforce.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use test_support::{
    app_config, database_server_url, kms_endpoint, token_body, OnDrop, TestApp, TestDatabase,
    TestKmsKey,
};

async fn secrets_manager() -> aws_sdk_secretsmanager::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(kms_endpoint())
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&sdk)
}

/// The users the service's sessions of this database run as.
async fn session_users(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "select distinct usename::text from pg_stat_activity \
         where datname = current_database() and application_name like 'token-store%'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_service_follows_a_rotated_secret_without_a_restart() {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let (first, second) = (format!("ts_app_a_{tag}"), format!("ts_app_b_{tag}"));
    // Roles belong to the server, not to a database: dropped after the database (declared
    // before it), when no session of theirs is left.
    let _roles = {
        let roles = [first.clone(), second.clone()];
        OnDrop::new("dropping the test's roles", move || async move {
            let server = database_server_url();
            let mut admin = PgConnection::connect(&format!("{server}/postgres")).await?;
            for role in roles {
                sqlx::query(&format!(r#"drop role if exists "{role}""#))
                    .execute(&mut admin)
                    .await?;
            }
            Ok(())
        })
    };
    let database = TestDatabase::create("credentials").await;
    let database_url = database.url().to_owned();
    let mut admin = PgConnection::connect(&database_url).await.unwrap();
    for user in [&first, &second] {
        sqlx::query(&format!(
            r#"create role "{user}" login password 'pw-{user}' in role token_store_app"#
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    let secrets = secrets_manager().await;
    let secret_name = format!("token-store-test-db-{tag}");
    let secret = |user: &str| {
        json!({"username": user, "password": format!("pw-{user}"), "engine": "postgres"})
            .to_string()
    };
    secrets
        .create_secret()
        .name(&secret_name)
        .secret_string(secret(&first))
        .send()
        .await
        .expect("creating a secret in LocalStack (scripts/localstack.sh starts Secrets Manager)");
    let _secret = {
        let name = secret_name.clone();
        OnDrop::new("deleting the test's secret", move || async move {
            secrets_manager()
                .await
                .delete_secret()
                .secret_id(name)
                .force_delete_without_recovery(true)
                .send()
                .await?;
            Ok(())
        })
    };

    let key = TestKmsKey::create().await;
    let mut config = app_config(&database_url, key.arn(), &kms_endpoint());
    config.database.password_secret_arn = Some(secret_name.clone());
    config.database.password_refresh_interval = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;

    // Everything the service does works with the application role's privileges.
    let body = token_body("rotating");
    assert_eq!(app.put_token("alice", "google", &body).await.status(), 204);
    assert_eq!(app.get_token("alice", "google").await.status(), 200);
    assert_eq!(session_users(&app).await, vec![first.clone()]);

    // Rotation: the secret names the other user, then the old one is disabled and its
    // sessions end (the next rotation in Secrets Manager's alternating-users strategy).
    secrets
        .put_secret_value()
        .secret_id(&secret_name)
        .secret_string(secret(&second))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    sqlx::query(&format!(r#"alter role "{first}" nologin"#))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where usename = $1")
        .bind(&first)
        .execute(&mut admin)
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let read = loop {
        let read = app.get_token("alice", "google").await;
        if read.status() == 200 || Instant::now() > deadline {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(read.status(), 200, "the service did not follow the secret");
    assert_eq!(
        read.json::<Value>().await.unwrap()["accessToken"],
        body["accessToken"]
    );
    assert_eq!(
        app.put_token("bob", "google", &token_body("after"))
            .await
            .status(),
        204
    );
    let deleted = app.delete_token("bob", "google").await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(session_users(&app).await, vec![second.clone()]);

    // Least privilege: the service's role cannot change the schema.
    let as_service = {
        let mut url = reqwest::Url::parse(&database_url).unwrap();
        url.set_username(&second).unwrap();
        url.set_password(Some(&format!("pw-{second}"))).unwrap();
        url.to_string()
    };
    let mut service = PgConnection::connect(&as_service).await.unwrap();
    let ddl = sqlx::query("alter table integration_tokens add column leaked text")
        .execute(&mut service)
        .await;
    assert!(ddl.is_err(), "the application role may alter the table");
}
