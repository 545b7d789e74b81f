//! All SQL lives here. Rows are sealed already: this module never sees a plaintext token.
//!
//! Queries are runtime-checked (`sqlx::query_as`) rather than `query!`: the statements are
//! few and covered by the integration tests against a real database, and it keeps the build
//! free of a database or an offline cache.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgRow, PgTypeInfo, PgValueRef};
use sqlx::{FromRow, PgExecutor, PgPool, Postgres, Row};

use crate::domain::{GrantKey, ProviderName, TokenStatus, UserId};

/// A stored grant, still sealed; which grant it is, the caller knows.
#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub kms_key_id: String,
    pub wrapped_data_key: Vec<u8>,
    pub data_key_created_at: DateTime<Utc>,
    pub access_token_ct: Vec<u8>,
    pub refresh_token_ct: Option<Vec<u8>>,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<String>,
    pub status: TokenStatus,
    pub version: i64,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub refresh_failure_count: i32,
    pub last_refresh_error: Option<String>,
    pub refresh_retry_after: Option<DateTime<Utc>>,
}

/// A row with its grant, as a lookup of several grants returns it.
#[derive(Debug, Clone, FromRow)]
pub struct KeyedRow {
    #[sqlx(flatten)]
    pub grant: GrantKey,
    #[sqlx(flatten)]
    pub row: TokenRow,
}

/// A grant sealed for writing: the wrapped data key and the ciphertexts.
pub struct SealedRow {
    pub kms_key_id: String,
    pub wrapped_data_key: Vec<u8>,
    pub data_key_created_at: DateTime<Utc>,
    pub access_token_ct: Vec<u8>,
    pub refresh_token_ct: Option<Vec<u8>>,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<String>,
}

/// The columns of a [`TokenRow`], in its order: what a lookup selects (the bench's pgbench
/// script runs the same statement).
pub const COLUMNS: &str = r#"kms_key_id, wrapped_data_key, data_key_created_at,
    access_token_ct, refresh_token_ct, expires_at, scopes, status, version,
    last_refresh_at, refresh_failure_count, last_refresh_error, refresh_retry_after"#;

/// The `user_id` and `provider` columns are a [`GrantKey`]; a value that does not parse is
/// a malformed row (an error), never a guess.
impl<'r> FromRow<'r, PgRow> for GrantKey {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Self> {
        fn malformed(
            column: &str,
            err: impl std::error::Error + Send + Sync + 'static,
        ) -> sqlx::Error {
            sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: Box::new(err),
            }
        }
        let user = UserId::parse(row.try_get("user_id")?).map_err(|e| malformed("user_id", e))?;
        let provider =
            ProviderName::parse(row.try_get("provider")?).map_err(|e| malformed("provider", e))?;
        Ok(GrantKey::new(user, provider))
    }
}

/// `status` is text in the table (with a check constraint) and [`TokenStatus`] here.
impl sqlx::Type<Postgres> for TokenStatus {
    fn type_info() -> PgTypeInfo {
        <&str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for TokenStatus {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match <&str as sqlx::Decode<Postgres>>::decode(value)? {
            "active" => Ok(Self::Active),
            "reauthorization_required" => Ok(Self::ReauthorizationRequired),
            other => Err(format!("unknown grant status {other:?}").into()),
        }
    }
}

pub async fn find(db: impl PgExecutor<'_>, grant: &GrantKey) -> sqlx::Result<Option<TokenRow>> {
    // The statement's text is built once: a read looks it up in the statement cache.
    static FIND: LazyLock<String> = LazyLock::new(|| {
        format!("select {COLUMNS} from integration_tokens where user_id = $1 and provider = $2")
    });
    sqlx::query_as(FIND.as_str())
        .bind(grant.user.as_str())
        .bind(grant.provider.as_str())
        .fetch_optional(db)
        .await
}

/// The rows of several grants in one statement; grants without a row are left out. Each
/// grant is one probe of the `(user_id, provider)` index (a nested loop over the arrays,
/// checked with `EXPLAIN ANALYZE`).
pub async fn find_many(
    db: impl PgExecutor<'_>,
    grants: &[&GrantKey],
) -> sqlx::Result<Vec<KeyedRow>> {
    let users: Vec<&str> = grants.iter().map(|g| g.user.as_str()).collect();
    let providers: Vec<&str> = grants.iter().map(|g| g.provider.as_str()).collect();
    static FIND_MANY: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select user_id, provider, {COLUMNS} \
             from unnest($1::text[], $2::text[]) as wanted(user_id, provider) \
             join integration_tokens using (user_id, provider)"
        )
    });
    sqlx::query_as(FIND_MANY.as_str())
        .bind(users)
        .bind(providers)
        .fetch_all(db)
        .await
}

/// Stores a grant, replacing any earlier one: a new data key, an active status, clean
/// refresh bookkeeping, and the next version.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    grant: &GrantKey,
    row: &SealedRow,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        r#"
        insert into integration_tokens (
            user_id, provider, kms_key_id, wrapped_data_key, data_key_created_at,
            access_token_ct, refresh_token_ct, expires_at, scopes)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
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
    .bind(grant.user.as_str())
    .bind(grant.provider.as_str())
    .bind(&row.kms_key_id)
    .bind(&row.wrapped_data_key)
    .bind(row.data_key_created_at)
    .bind(&row.access_token_ct)
    .bind(row.refresh_token_ct.as_deref())
    .bind(row.expires_at)
    .bind(&row.scopes)
    .fetch_one(db)
    .await
}

/// Deletes one grant; `true` if there was one.
pub async fn delete(db: impl PgExecutor<'_>, grant: &GrantKey) -> sqlx::Result<bool> {
    let done = sqlx::query("delete from integration_tokens where user_id = $1 and provider = $2")
        .bind(grant.user.as_str())
        .bind(grant.provider.as_str())
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The providers a user has grants with, as stored.
pub async fn providers_of(db: impl PgExecutor<'_>, user: &UserId) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "select provider from integration_tokens where user_id = $1 order by provider",
    )
    .bind(user.as_str())
    .fetch_all(db)
    .await
}

/// Deletes every grant of a user (account erasure); the number deleted.
pub async fn delete_user(db: impl PgExecutor<'_>, user: &UserId) -> sqlx::Result<u64> {
    let done = sqlx::query("delete from integration_tokens where user_id = $1")
        .bind(user.as_str())
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

/// The grants table answers a read (not only the server: a table locked by another
/// session blocks this as it blocks every request).
pub async fn probe(db: &PgPool) -> sqlx::Result<()> {
    sqlx::query("select 1 from integration_tokens limit 1")
        .execute(db)
        .await
        .map(|_| ())
}

/// Runs the embedded migrations.
pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(db).await
}

/// Takes the transaction-scoped advisory lock of a grant, waiting at most `lock_timeout`.
/// The lock is released when the transaction ends, or when its connection dies.
pub async fn lock_grant(
    tx: &mut sqlx::PgConnection,
    grant: &GrantKey,
    lock_timeout: std::time::Duration,
) -> sqlx::Result<()> {
    // `set local` takes no bind parameters; set_config(..., true) is its parameterised form.
    sqlx::query("select set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", lock_timeout.as_millis()))
        .execute(&mut *tx)
        .await?;
    // One 64-bit key per grant; a hash collision only serialises two grants' refreshes.
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
        .bind(grant.provider.as_str())
        .bind(grant.user.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// `true` if the error is PostgreSQL giving up on a lock (`lock_timeout`).
pub fn is_lock_timeout(err: &sqlx::Error) -> bool {
    has_code(err, &["55P03"])
}

/// `true` if PostgreSQL gave up on a lock or cancelled a statement that ran too long
/// (`lock_timeout`, `statement_timeout`): the server and the connection are fine.
pub fn is_timeout(err: &sqlx::Error) -> bool {
    has_code(err, &["55P03", "57014"])
}

fn has_code(err: &sqlx::Error, codes: &[&str]) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| codes.contains(&&*code))
}

/// `true` if the error says the database is away or did not answer in time, rather than
/// that a statement was wrong: no connection (refused, dropped, the pool timed out), the
/// server shutting down or refusing connections, or a statement or lock timeout.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            // Class 08: connection exception. 57014: statement timeout (query canceled).
            // 55P03: lock timeout. 57P01-03: shutting down, crashed, starting up.
            // 53300: too many connections.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "57014" | "55P03" | "57P01" | "57P02" | "57P03" | "53300"
                )
        }),
        _ => false,
    }
}

/// Writes a refresh's result if the row is still at `version`; `false` if it moved on.
pub async fn write_refreshed(
    db: impl PgExecutor<'_>,
    grant: &GrantKey,
    version: i64,
    row: &SealedRow,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        r#"
        update integration_tokens set
            kms_key_id = $4,
            wrapped_data_key = $5,
            data_key_created_at = $6,
            access_token_ct = $7,
            refresh_token_ct = $8,
            expires_at = $9,
            scopes = $10,
            version = version + 1,
            last_refresh_at = now(),
            refresh_failure_count = 0,
            last_refresh_error = null,
            refresh_retry_after = null,
            updated_at = now()
        where user_id = $1 and provider = $2 and version = $3
        "#,
    )
    .bind(grant.user.as_str())
    .bind(grant.provider.as_str())
    .bind(version)
    .bind(&row.kms_key_id)
    .bind(&row.wrapped_data_key)
    .bind(row.data_key_created_at)
    .bind(&row.access_token_ct)
    .bind(row.refresh_token_ct.as_deref())
    .bind(row.expires_at)
    .bind(&row.scopes)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the grant dead, but only while the refresh token that failed is still the stored
/// one: a grant refreshed or replaced meanwhile is left alone. `true` if marked.
pub async fn mark_reauthorization_required(
    db: impl PgExecutor<'_>,
    grant: &GrantKey,
    failed_refresh_token_ct: &[u8],
    error_code: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        r#"
        update integration_tokens set
            status = 'reauthorization_required',
            version = version + 1,
            refresh_failure_count = refresh_failure_count + 1,
            last_refresh_error = $4,
            updated_at = now()
        where user_id = $1 and provider = $2 and refresh_token_ct = $3
        "#,
    )
    .bind(grant.user.as_str())
    .bind(grant.provider.as_str())
    .bind(failed_refresh_token_ct)
    .bind(error_code)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Counts a transient failure and starts a cool-down, if the row is still at `version`.
pub async fn record_transient_failure(
    db: impl PgExecutor<'_>,
    grant: &GrantKey,
    version: i64,
    error_code: &str,
    retry_after: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        r#"
        update integration_tokens set
            version = version + 1,
            refresh_failure_count = refresh_failure_count + 1,
            last_refresh_error = $4,
            refresh_retry_after = $5,
            updated_at = now()
        where user_id = $1 and provider = $2 and version = $3
        "#,
    )
    .bind(grant.user.as_str())
    .bind(grant.provider.as_str())
    .bind(version)
    .bind(error_code)
    .bind(retry_after)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The identity and wrapped key of a row, for rewrapping.
#[derive(Debug, Clone, FromRow)]
pub struct WrappedKeyRow {
    pub id: i64,
    #[sqlx(flatten)]
    pub grant: GrantKey,
    pub kms_key_id: String,
    pub wrapped_data_key: Vec<u8>,
    pub version: i64,
}

/// The next rows (by id, after `after_id`) whose data key is not wrapped under `key_arn`.
pub async fn rows_not_under_key(
    db: impl PgExecutor<'_>,
    key_arn: &str,
    after_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<WrappedKeyRow>> {
    sqlx::query_as(
        r#"
        select id, user_id, provider, kms_key_id, wrapped_data_key, version
        from integration_tokens
        where kms_key_id <> $1 and id > $2
        order by id
        limit $3
        "#,
    )
    .bind(key_arn)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How many rows are not wrapped under `key_arn`.
pub async fn count_not_under_key(db: impl PgExecutor<'_>, key_arn: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from integration_tokens where kms_key_id <> $1")
        .bind(key_arn)
        .fetch_one(db)
        .await
}

/// Replaces a row's wrapped data key if the row is still at `version` (a concurrent store
/// or refresh wins, and is picked up by the next pass). `true` if replaced.
pub async fn replace_wrapped_key(
    db: impl PgExecutor<'_>,
    id: i64,
    version: i64,
    kms_key_id: &str,
    wrapped_data_key: &[u8],
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        r#"
        update integration_tokens set
            kms_key_id = $3,
            wrapped_data_key = $4,
            version = version + 1,
            updated_at = now()
        where id = $1 and version = $2
        "#,
    )
    .bind(id)
    .bind(version)
    .bind(kms_key_id)
    .bind(wrapped_data_key)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
