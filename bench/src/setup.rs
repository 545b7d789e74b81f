//! The SQL the benchmark runs itself: expiring tokens, counting data keys, reading the plan
//! of the lookup.

use sqlx::PgPool;

/// The columns the service's lookup (`store::find`) selects, on one line (a pgbench
/// script's command).
pub fn lookup_columns() -> String {
    let columns: Vec<&str> = token_store::store::COLUMNS.split_whitespace().collect();
    columns.join(" ")
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
