//! A fresh database and a fresh KMS key for one run, and the SQL the benchmark runs itself
//! (expiring tokens, reading the plan of the lookup).

use anyhow::Context;
use aws_sdk_kms::types::KeySpec;
use sqlx::{Connection, Executor, PgConnection, PgPool};

/// The columns the service's lookup (`store::find`) selects.
pub const LOOKUP_COLUMNS: &str = "user_id, provider, kms_key_id, wrapped_data_key, \
    data_key_created_at, access_token_ct, refresh_token_ct, expires_at, scopes, status, \
    version, last_refresh_at, refresh_failure_count, last_refresh_error, refresh_retry_after";

/// Drops (if it exists) and creates database `name` on the server; its URL.
pub async fn recreate_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(&format!("{server_url}/postgres"))
        .await
        .with_context(|| format!("connecting to PostgreSQL at {server_url}"))?;
    admin
        .execute(format!(r#"drop database if exists "{name}" with (force)"#).as_str())
        .await?;
    admin
        .execute(format!(r#"create database "{name}""#).as_str())
        .await?;
    Ok(format!("{server_url}/{name}"))
}

pub async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&format!("{server_url}/postgres")).await?;
    admin
        .execute(format!(r#"drop database if exists "{name}" with (force)"#).as_str())
        .await?;
    Ok(())
}

/// A new symmetric KMS key (LocalStack, or whatever `AWS_ENDPOINT_URL` points at).
pub async fn create_kms_key(endpoint: &str) -> anyhow::Result<String> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&sdk);
    let created = kms
        .create_key()
        .key_spec(KeySpec::SymmetricDefault)
        .description("token-store benchmark key")
        .send()
        .await
        .with_context(|| format!("creating a KMS key at {endpoint} (is LocalStack running?)"))?;
    created
        .key_metadata()
        .map(|m| m.arn().unwrap_or(m.key_id()).to_owned())
        .context("CreateKey returned no key")
}

pub async fn postgres_version(db: &PgPool) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("select version()").fetch_one(db).await?)
}

/// Makes the tokens of `users` expired as of a minute ago.
pub async fn expire(db: &PgPool, users: &[u64]) -> anyhow::Result<u64> {
    let ids: Vec<String> = users.iter().map(|u| user_id(*u)).collect();
    let done = sqlx::query(
        "update integration_tokens set expires_at = now() - interval '1 minute' \
         where provider = 'google' and user_id = any($1)",
    )
    .bind(&ids)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Distinct wrapped data keys among the rows of `users`.
pub async fn distinct_keys(db: &PgPool, users: &[u64]) -> anyhow::Result<i64> {
    let ids: Vec<String> = users.iter().map(|u| user_id(*u)).collect();
    Ok(sqlx::query_scalar(
        "select count(distinct wrapped_data_key) from integration_tokens \
         where provider = 'google' and user_id = any($1)",
    )
    .bind(&ids)
    .fetch_one(db)
    .await?)
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the service's lookup for one user, line by line.
pub async fn lookup_plan(db: &PgPool, user: u64) -> anyhow::Result<Vec<String>> {
    sqlx::query("analyze integration_tokens")
        .execute(db)
        .await?;
    let sql = format!(
        "explain (analyze, buffers) select {LOOKUP_COLUMNS} from integration_tokens \
         where user_id = $1 and provider = 'google'"
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(user_id(user))
        .fetch_all(db)
        .await?)
}

pub fn user_id(n: u64) -> String {
    format!("user-{n}")
}
