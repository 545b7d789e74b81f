//! All SQL lives here. Rows are sealed already: this module never sees a plaintext token.
//!
//! Queries are runtime-checked (`sqlx::query_as`) rather than `query!`: the statements are
//! few and covered by the integration tests against a real database, and it keeps the build
//! free of a database or an offline cache.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// A stored row, still sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub user_id: String,
    pub provider: String,
    pub kms_key_id: String,
    pub wrapped_data_key: Vec<u8>,
    pub data_key_created_at: DateTime<Utc>,
    pub access_token_ct: Vec<u8>,
    pub refresh_token_ct: Option<Vec<u8>>,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<String>,
    pub status: String,
    pub version: i64,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub refresh_failure_count: i32,
    pub last_refresh_error: Option<String>,
    pub refresh_retry_after: Option<DateTime<Utc>>,
}

/// A freshly sealed grant, as `store` writes it.
pub struct NewRow<'a> {
    pub user_id: &'a str,
    pub provider: &'a str,
    pub kms_key_id: &'a str,
    pub wrapped_data_key: &'a [u8],
    pub access_token_ct: &'a [u8],
    pub refresh_token_ct: Option<&'a [u8]>,
    pub expires_at: DateTime<Utc>,
    pub scopes: &'a [String],
}

const COLUMNS: &str = r#"user_id, provider, kms_key_id, wrapped_data_key, data_key_created_at,
    access_token_ct, refresh_token_ct, expires_at, scopes, status, version,
    last_refresh_at, refresh_failure_count, last_refresh_error, refresh_retry_after"#;

pub async fn find(
    db: impl PgExecutor<'_>,
    user_id: &str,
    provider: &str,
) -> sqlx::Result<Option<TokenRow>> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from integration_tokens where user_id = $1 and provider = $2"
    ))
    .bind(user_id)
    .bind(provider)
    .fetch_optional(db)
    .await
}

/// Stores a grant, replacing any earlier one of the pair: a new data key, an active status,
/// clean refresh bookkeeping, and the next version.
pub async fn upsert(db: impl PgExecutor<'_>, row: &NewRow<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        r#"
        insert into integration_tokens (
            user_id, provider, kms_key_id, wrapped_data_key, data_key_created_at,
            access_token_ct, refresh_token_ct, expires_at, scopes)
        values ($1, $2, $3, $4, now(), $5, $6, $7, $8)
        on conflict (user_id, provider) do update set
            kms_key_id = excluded.kms_key_id,
            wrapped_data_key = excluded.wrapped_data_key,
            data_key_created_at = excluded.data_key_created_at,
            access_token_ct = excluded.access_token_ct,
            refresh_token_ct = excluded.refresh_token_ct,
            expires_at = excluded.expires_at,
            scopes = excluded.scopes,
            status = 'active',
            version = integration_tokens.version + 1,
            refresh_failure_count = 0,
            last_refresh_error = null,
            refresh_retry_after = null,
            updated_at = now()
        returning version
        "#,
    )
    .bind(row.user_id)
    .bind(row.provider)
    .bind(row.kms_key_id)
    .bind(row.wrapped_data_key)
    .bind(row.access_token_ct)
    .bind(row.refresh_token_ct)
    .bind(row.expires_at)
    .bind(row.scopes)
    .fetch_one(db)
    .await
}

/// Deletes one grant; `true` if there was one.
pub async fn delete(db: impl PgExecutor<'_>, user_id: &str, provider: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("delete from integration_tokens where user_id = $1 and provider = $2")
        .bind(user_id)
        .bind(provider)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Deletes one grant only if it is still at `version` (a concurrent store wins).
pub async fn delete_version(
    db: impl PgExecutor<'_>,
    user_id: &str,
    provider: &str,
    version: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "delete from integration_tokens where user_id = $1 and provider = $2 and version = $3",
    )
    .bind(user_id)
    .bind(provider)
    .bind(version)
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The providers a user has grants with.
pub async fn providers_of(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "select provider from integration_tokens where user_id = $1 order by provider",
    )
    .bind(user_id)
    .fetch_all(db)
    .await
}

/// Deletes every grant of a user (account erasure); the number deleted.
pub async fn delete_user(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<u64> {
    let done = sqlx::query("delete from integration_tokens where user_id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

/// The database answers.
pub async fn ping(db: &PgPool) -> sqlx::Result<()> {
    sqlx::query("select 1").execute(db).await.map(|_| ())
}

/// Runs the embedded migrations.
pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(db).await
}
