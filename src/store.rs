//! All SQL lives here. Rows are sealed already: this module never sees a plaintext token.
//!
//! Queries are runtime-checked (`sqlx::query_as`) rather than `query!`: the statements are
//! few and covered by the integration tests against a real database, and it keeps the build
//! free of a database or an offline cache.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow, PgTypeInfo, PgValueRef};
use sqlx::{FromRow, PgExecutor, PgPool, Postgres, Row};

use crate::domain::{GrantKey, ProviderName, TokenStatus, UserId};

/// A stored grant, still sealed; which grant it is, the caller knows.
#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    /// The row's identity: a grant deleted and stored again is a new row with a larger id.
    pub id: i64,
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
    pub next_refresh_at: Option<DateTime<Utc>>,
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
    /// When the keeper refreshes it (`None`: never).
    pub next_refresh_at: Option<DateTime<Utc>>,
}

/// The columns of a [`TokenRow`], in its order: what a lookup selects (the bench's pgbench
/// script runs the same statement).
pub const COLUMNS: &str = r#"id, kms_key_id, wrapped_data_key, data_key_created_at,
    access_token_ct, refresh_token_ct, expires_at, scopes, status, version,
    last_refresh_at, refresh_failure_count, last_refresh_error, refresh_retry_after,
    next_refresh_at"#;

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

/// The channel on which every change of a row is announced, from inside its transaction (a
/// trigger, see the migration `row_change_notify`), and on which each replica also sends its
/// heartbeats: notifications on one channel arrive in commit order.
pub const GRANT_CHANNEL: &str = "token_store_grants";

/// A new connection listening on [`GRANT_CHANNEL`]. It has a pool of its own: a listener
/// given up because it hangs keeps its connection until the hang ends, and must not keep
/// the next one from connecting.
pub async fn listen(options: PgConnectOptions, timeout: Duration) -> sqlx::Result<PgListener> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(GRANT_CHANNEL).await?;
    Ok(listener)
}

/// Sends `payload` on [`GRANT_CHANNEL`] (a replica's heartbeat).
pub async fn notify(db: impl PgExecutor<'_>, payload: &str) -> sqlx::Result<()> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(GRANT_CHANNEL)
        .bind(payload)
        .execute(db)
        .await
        .map(drop)
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
            access_token_ct, refresh_token_ct, expires_at, scopes, next_refresh_at)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
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
            next_refresh_at = excluded.next_refresh_at,
            keeper_claimed_until = null,
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
    .bind(row.next_refresh_at)
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

/// Deletes every grant of a user (account erasure); the providers of the grants deleted.
pub async fn delete_user(db: impl PgExecutor<'_>, user: &UserId) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("delete from integration_tokens where user_id = $1 returning provider")
        .bind(user.as_str())
        .fetch_all(db)
        .await
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
    lock_timeout: Duration,
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
            next_refresh_at = $11,
            keeper_claimed_until = null,
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
    .bind(row.next_refresh_at)
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
            next_refresh_at = null,
            keeper_claimed_until = null,
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
            next_refresh_at = $5,
            keeper_claimed_until = null,
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

/// The row of a grant, locked until the transaction ends: what a store replaces.
pub async fn find_for_update(
    db: impl PgExecutor<'_>,
    grant: &GrantKey,
) -> sqlx::Result<Option<TokenRow>> {
    static FIND_FOR_UPDATE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select {COLUMNS} from integration_tokens \
             where user_id = $1 and provider = $2 for update"
        )
    });
    sqlx::query_as(FIND_FOR_UPDATE.as_str())
        .bind(grant.user.as_str())
        .bind(grant.provider.as_str())
        .fetch_optional(db)
        .await
}

/// An event of the outbox, as it is written.
pub struct NewEvent<'a> {
    pub event_id: &'a str,
    pub kind: &'a str,
    pub payload: &'a serde_json::Value,
}

/// Writes an event of `grant` and one pending delivery per endpoint, in the caller's
/// transaction: the event exists if and only if the change it reports commits.
pub async fn insert_event(
    db: impl PgExecutor<'_>,
    grant: &GrantKey,
    event: &NewEvent<'_>,
    endpoints: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        r#"
        with event as (
            insert into grant_events (event_id, user_id, provider, type, payload)
            values ($1, $2, $3, $4, $5)
            returning id)
        insert into webhook_deliveries (event_id, endpoint)
        select event.id, endpoint from event, unnest($6::text[]) as endpoint
        "#,
    )
    .bind(event.event_id)
    .bind(grant.user.as_str())
    .bind(grant.provider.as_str())
    .bind(event.kind)
    .bind(sqlx::types::Json(event.payload))
    .bind(endpoints)
    .execute(db)
    .await?;
    Ok(())
}

/// Claims up to `limit` due grants of `providers` for `lease` (grants another replica
/// claims at the same moment are skipped, not waited for), most overdue first.
pub async fn claim_due_grants(
    db: impl PgExecutor<'_>,
    providers: &[String],
    lease: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<DueGrant>> {
    sqlx::query_as(
        r#"
        update integration_tokens set keeper_claimed_until = now() + $2
        where id in (
            select id from integration_tokens
            where next_refresh_at <= now()
              and status = 'active'
              and provider = any($1)
              and (keeper_claimed_until is null or keeper_claimed_until < now())
            order by next_refresh_at
            limit $3
            for update skip locked)
        returning user_id, provider, next_refresh_at, expires_at
        "#,
    )
    .bind(providers)
    .bind(lease)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A grant the keeper claimed.
#[derive(Debug, Clone, FromRow)]
pub struct DueGrant {
    #[sqlx(flatten)]
    pub grant: GrantKey,
    pub next_refresh_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Grants by health (`active`, `degraded`, `reauthorization_required`) and provider.
pub async fn count_by_state(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, String, i64)>> {
    static COUNT: LazyLock<String> = LazyLock::new(|| {
        format!("select {HEALTH_STATE} as state, provider, count(*) from integration_tokens group by 1, 2")
    });
    sqlx::query_as(COUNT.as_str()).fetch_all(db).await
}

/// A page of grants (no ciphertexts), by `(user_id, provider)` after `after`, filtered by
/// health state and provider.
pub async fn list_grants(
    db: impl PgExecutor<'_>,
    state: Option<&str>,
    provider: Option<&str>,
    after: Option<(&str, &str)>,
    limit: i64,
) -> sqlx::Result<Vec<GrantSummaryRow>> {
    static LIST: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select {} from integration_tokens \
             where ($1::text is null or $1 = {HEALTH_STATE}) \
               and ($2::text is null or provider = $2) \
               and ($3::text is null or (user_id, provider) > ($3, $4)) \
             order by user_id, provider limit $5",
            *SUMMARY_COLUMNS
        )
    });
    sqlx::query_as(LIST.as_str())
        .bind(state)
        .bind(provider)
        .bind(after.map(|(user, _)| user))
        .bind(after.map(|(_, provider)| provider))
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Every grant of a user (no ciphertexts).
pub async fn grants_of_user(
    db: impl PgExecutor<'_>,
    user: &UserId,
) -> sqlx::Result<Vec<GrantSummaryRow>> {
    static OF_USER: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select {} from integration_tokens where user_id = $1 order by provider",
            *SUMMARY_COLUMNS
        )
    });
    sqlx::query_as(OF_USER.as_str())
        .bind(user.as_str())
        .fetch_all(db)
        .await
}

/// A row's health state as SQL: `active`, `degraded` or `reauthorization_required`.
const HEALTH_STATE: &str = "case when status <> 'active' then status \
     when refresh_token_ct is null and expires_at <= now() then 'reauthorization_required' \
     when refresh_failure_count > 0 then 'degraded' else 'active' end";

/// The columns of a [`GrantSummaryRow`].
static SUMMARY_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "user_id, provider, {HEALTH_STATE} as state, expires_at, scopes, last_refresh_at, \
         refresh_failure_count, last_refresh_error, refresh_retry_after, next_refresh_at"
    )
});

/// A grant's state, without its sealed tokens.
#[derive(Debug, Clone, FromRow)]
pub struct GrantSummaryRow {
    #[sqlx(flatten)]
    pub grant: GrantKey,
    /// `active`, `degraded` or `reauthorization_required`: the one definition of a grant's
    /// health, which the filters of a listing use too.
    pub state: String,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<String>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub refresh_failure_count: i32,
    pub last_refresh_error: Option<String>,
    pub refresh_retry_after: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
}

/// A delivery claimed for sending, with its event.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub endpoint: String,
    pub attempts: i32,
    pub event_id: String,
    pub payload: sqlx::types::Json<serde_json::Value>,
}

/// Claims up to `limit` due deliveries to `endpoints` for `lease`, oldest first, each
/// only while no earlier event of the same grant waits for the same endpoint (order per
/// grant). Counts the attempt.
pub async fn claim_deliveries(
    db: impl PgExecutor<'_>,
    endpoints: &[String],
    lease: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<ClaimedDelivery>> {
    sqlx::query_as(
        r#"
        with due as (
            select d.event_id, d.endpoint
            from webhook_deliveries d join grant_events e on e.id = d.event_id
            where d.state = 'pending'
              and d.next_attempt_at <= now()
              and (d.claimed_until is null or d.claimed_until < now())
              and d.endpoint = any($1)
              and not exists (
                  select 1 from webhook_deliveries d2 join grant_events e2 on e2.id = d2.event_id
                  where e2.user_id = e.user_id and e2.provider = e.provider
                    and d2.endpoint = d.endpoint and d2.state = 'pending' and e2.id < e.id)
            order by d.event_id
            limit $3
            for update of d skip locked),
        claimed as (
            update webhook_deliveries w
               set claimed_until = now() + $2, attempts = w.attempts + 1
              from due
             where w.event_id = due.event_id and w.endpoint = due.endpoint
            returning w.event_id, w.endpoint, w.attempts)
        select claimed.event_id as id, claimed.endpoint, claimed.attempts,
               e.event_id, e.payload
        from claimed join grant_events e on e.id = claimed.event_id
        order by claimed.event_id
        "#,
    )
    .bind(endpoints)
    .bind(lease)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Records a delivery that the endpoint accepted.
pub async fn mark_delivered(db: impl PgExecutor<'_>, id: i64, endpoint: &str) -> sqlx::Result<()> {
    sqlx::query(
        "update webhook_deliveries set state = 'delivered', delivered_at = now(), \
         claimed_until = null, last_error = null where event_id = $1 and endpoint = $2",
    )
    .bind(id)
    .bind(endpoint)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a failed attempt: tried again at `retry_at`, or failed for good if `None`.
pub async fn mark_attempt_failed(
    db: impl PgExecutor<'_>,
    id: i64,
    endpoint: &str,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    sqlx::query(
        r#"
        update webhook_deliveries set
            state = case when $4::timestamptz is null then 'failed' else 'pending' end,
            next_attempt_at = coalesce($4, next_attempt_at),
            claimed_until = null,
            last_error = $3
        where event_id = $1 and endpoint = $2
        "#,
    )
    .bind(id)
    .bind(endpoint)
    .bind(error)
    .bind(retry_at)
    .execute(db)
    .await?;
    Ok(())
}

/// A delivery with its event, as operators list them.
#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    #[sqlx(flatten)]
    pub grant: GrantKey,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub endpoint: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Deliveries after `(after_id, after_endpoint)`, filtered by state, oldest event first.
pub async fn list_deliveries(
    db: impl PgExecutor<'_>,
    state: Option<&str>,
    after: Option<(i64, &str)>,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(
        r#"
        select e.id, e.event_id, e.user_id, e.provider, e.type, e.created_at,
               d.endpoint, d.state, d.attempts, d.last_error, d.delivered_at
        from webhook_deliveries d join grant_events e on e.id = d.event_id
        where ($1::text is null or d.state = $1)
          and ($2::bigint is null or (d.event_id, d.endpoint) > ($2, $3))
        order by d.event_id, d.endpoint
        limit $4
        "#,
    )
    .bind(state)
    .bind(after.map(|(id, _)| id))
    .bind(after.map(|(_, endpoint)| endpoint))
    .bind(limit)
    .fetch_all(db)
    .await
}
