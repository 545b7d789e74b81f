//! The SQL the benchmark runs itself: expiring tokens, counting data keys, reading the plan
//! of the lookup, counting the database's transactions.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};

/// The columns the service's lookup (`store::find`) selects, on one line (a pgbench
/// script's command).
pub fn lookup_columns() -> String {
    let columns: Vec<&str> = token_store::store::COLUMNS.split_whitespace().collect();
    columns.join(" ")
}

pub async fn postgres_version(db: &PgPool) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("select version()").fetch_one(db).await?)
}

/// Makes the tokens of `users` expired as of a minute ago. The update bumps `version`, as
/// every change of a row's content does, so that the table's trigger announces it and the
/// replicas drop the rows from their row caches; a replica would not serve a cached token
/// due for refresh anyway, so the next read goes to the database either way.
pub async fn expire(db: &PgPool, users: &[u64]) -> anyhow::Result<u64> {
    let ids: Vec<String> = users.iter().map(|u| user_id(*u)).collect();
    let done = sqlx::query(
        "update integration_tokens \
         set expires_at = now() - interval '1 minute', version = version + 1 \
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
        "explain (analyze, buffers) select {} from integration_tokens \
         where user_id = $1 and provider = 'google'",
        lookup_columns()
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(user_id(user))
        .fetch_all(db)
        .await?)
}

pub fn user_id(n: u64) -> String {
    format!("user-{n}")
}

/// How long after a backend's last statement `pg_stat_database` is sure to include it:
/// PostgreSQL 15's `PGSTAT_IDLE_INTERVAL` (10 s), and a second more.
pub const STATS_FLUSH: Duration = Duration::from_secs(11);

/// Counts the transactions of one database from `pg_stat_database` (every autocommit
/// statement is one), on a connection to the server's `postgres` database so that its own
/// queries are not counted.
///
/// A backend adds its counts to `pg_stat_database` lazily (PostgreSQL 15: at most once a
/// second while busy, and 10 s after it goes idle for what it did in its last second), so
/// a count is complete only [`STATS_FLUSH`] after the work it should include.
pub struct Transactions {
    connection: PgConnection,
    database: String,
}

impl Transactions {
    pub async fn connect(server_url: &str, database: &str) -> anyhow::Result<Self> {
        let url = format!("{}/postgres", server_url.trim_end_matches('/'));
        let connection = PgConnection::connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            connection,
            database: database.to_owned(),
        })
    }

    /// Transactions committed or rolled back in the database so far, as flushed.
    pub async fn count(&mut self) -> anyhow::Result<i64> {
        // Outside a transaction every statement reads fresh statistics; clearing the
        // snapshot makes sure of it.
        sqlx::query("select pg_stat_clear_snapshot()")
            .execute(&mut self.connection)
            .await?;
        let count: i64 = sqlx::query_scalar(
            "select xact_commit + xact_rollback from pg_stat_database where datname = $1",
        )
        .bind(&self.database)
        .fetch_one(&mut self.connection)
        .await?;
        Ok(count)
    }

    pub async fn close(self) -> anyhow::Result<()> {
        Ok(self.connection.close().await?)
    }
}
