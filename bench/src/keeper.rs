//! The keeper's cost (`bench --keeper`): one replica with the keeper on (its defaults) over
//! a table of `grants` grants, first with nothing due (statements per second and CPU of the
//! service and of its PostgreSQL sessions), then with `due` grants made due at once against
//! a provider answering after `--provider-delay-ms` (how long until every one is refreshed).
//!
//! `due` grants are stored through the API (real data keys: they must refresh); the rest
//! are copies of one row with another user id, scheduled a day later: the keeper must look
//! past them, never open them.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use test_support::FakeProvider;

use crate::service::Service;
use crate::sys;

/// How the keeper did.
#[derive(Debug, Serialize)]
pub struct KeeperCost {
    pub grants: i64,
    pub due: u64,
    pub idle_seconds: f64,
    /// Transactions committed in the database per second, with nothing due.
    pub idle_transactions_per_s: f64,
    /// Statements per second, if `pg_stat_statements` is there (else `None`).
    pub idle_statements_per_s: Option<f64>,
    /// CPU of the service process, as a share of one core, with nothing due.
    pub idle_service_cpu_share: f64,
    /// CPU of the service's PostgreSQL sessions, as a share of one core, with nothing due.
    pub idle_postgres_cpu_share: f64,
    /// The keeper's claim statement over the table with nothing due (`EXPLAIN ANALYZE`).
    pub claim_ms: f64,
    pub provider_delay_ms: u64,
    pub concurrency_per_provider: u32,
    /// From making `due` grants due to the last one refreshed.
    pub refresh_all_seconds: f64,
    pub refreshes_per_s: f64,
    /// Service CPU per refresh while refreshing.
    pub service_cpu_us_per_refresh: f64,
}

pub struct KeeperPlan<'a> {
    pub service: &'a Service,
    pub db: &'a PgPool,
    pub database: &'a str,
    pub provider: &'a FakeProvider,
    pub grants: u64,
    pub due_users: &'a [u64],
    pub idle: Duration,
    pub provider_delay_ms: u64,
    /// The service's `[keeper] concurrency_per_provider` (its default).
    pub concurrency: u32,
}

pub async fn measure(plan: &KeeperPlan<'_>) -> anyhow::Result<KeeperCost> {
    let db = plan.db;
    let fillers = plan.grants.saturating_sub(plan.due_users.len() as u64);
    log!("copying one row {fillers} times (scheduled a day later)");
    sqlx::query(
        r#"
        insert into integration_tokens (
            user_id, provider, kms_key_id, wrapped_data_key, data_key_created_at,
            access_token_ct, refresh_token_ct, expires_at, scopes, next_refresh_at)
        select 'filler-' || n, t.provider, t.kms_key_id, t.wrapped_data_key,
               t.data_key_created_at, t.access_token_ct, t.refresh_token_ct,
               now() + interval '2 hours', t.scopes, now() + interval '1 day'
        from (select * from integration_tokens limit 1) t, generate_series(1, $1) n
        "#,
    )
    .bind(fillers as i64)
    .execute(db)
    .await?;
    sqlx::query("analyze integration_tokens")
        .execute(db)
        .await?;
    let grants: i64 = sqlx::query_scalar("select count(*) from integration_tokens")
        .fetch_one(db)
        .await?;

    log!(
        "nothing due: watching for {} s over {grants} grants",
        plan.idle.as_secs()
    );
    let statements = statements_available(db).await;
    let before = Snapshot::take(db, plan, statements).await?;
    tokio::time::sleep(plan.idle).await;
    let after = Snapshot::take(db, plan, statements).await?;
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    let per_s = |a: f64, b: f64| (b - a) / seconds;
    let claim_ms = claim_statement_ms(db).await?;

    log!(
        "{} grants due at once, provider answering in {} ms",
        plan.due_users.len(),
        plan.provider_delay_ms
    );
    let calls_before = plan.provider.token_calls();
    let cpu_before = sys::process_cpu(plan.service.pid())?;
    let started = Instant::now();
    sqlx::query(
        "update integration_tokens set next_refresh_at = now() where user_id like 'user-%'",
    )
    .execute(db)
    .await?;
    let target = calls_before + plan.due_users.len();
    while plan.provider.token_calls() < target || due_now(db).await? > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "the keeper did not refresh every due grant within an hour"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refresh_all = started.elapsed().as_secs_f64();
    let cpu = sys::process_cpu(plan.service.pid())?.saturating_sub(cpu_before);
    let refreshed = (plan.provider.token_calls() - calls_before) as f64;

    Ok(KeeperCost {
        grants,
        due: plan.due_users.len() as u64,
        idle_seconds: seconds,
        idle_transactions_per_s: per_s(before.transactions, after.transactions),
        idle_statements_per_s: before
            .statements
            .zip(after.statements)
            .map(|(a, b)| per_s(a, b)),
        idle_service_cpu_share: per_s(before.service_cpu, after.service_cpu),
        idle_postgres_cpu_share: per_s(before.postgres_cpu, after.postgres_cpu),
        claim_ms,
        provider_delay_ms: plan.provider_delay_ms,
        concurrency_per_provider: plan.concurrency,
        refresh_all_seconds: refresh_all,
        refreshes_per_s: refreshed / refresh_all,
        service_cpu_us_per_refresh: cpu.as_secs_f64() * 1e6 / refreshed.max(1.0),
    })
}

impl KeeperCost {
    pub fn markdown(&self) -> String {
        let statements = self
            .idle_statements_per_s
            .map_or("n/a (no pg_stat_statements)".to_owned(), |s| {
                format!("{s:.2}")
            });
        format!(
            "### The keeper\n\n\
             | nothing due, {grants} grants ({idle:.0} s) | |\n| --- | --- |\n\
             | transactions/s in the database | {tx:.2} |\n\
             | statements/s (pg_stat_statements) | {statements} |\n\
             | service CPU (share of one core) | {svc:.4} |\n\
             | its PostgreSQL sessions' CPU (share of one core) | {pg:.4} |\n\
             | the claim statement, nothing due (EXPLAIN ANALYZE) | {claim:.3} ms |\n\n\
             | {due} grants due at once, provider {delay} ms, concurrency {conc} | |\n| --- | --- |\n\
             | until the last is refreshed | {all:.1} s |\n\
             | refreshes/s | {rate:.1} |\n\
             | service CPU per refresh | {cpu:.0} µs |\n",
            grants = self.grants,
            idle = self.idle_seconds,
            tx = self.idle_transactions_per_s,
            svc = self.idle_service_cpu_share,
            pg = self.idle_postgres_cpu_share,
            claim = self.claim_ms,
            due = self.due,
            delay = self.provider_delay_ms,
            conc = self.concurrency_per_provider,
            all = self.refresh_all_seconds,
            rate = self.refreshes_per_s,
            cpu = self.service_cpu_us_per_refresh,
        )
    }
}

struct Snapshot {
    at: Instant,
    transactions: f64,
    statements: Option<f64>,
    service_cpu: f64,
    postgres_cpu: f64,
}

impl Snapshot {
    async fn take(db: &PgPool, plan: &KeeperPlan<'_>, statements: bool) -> anyhow::Result<Self> {
        // The statistics a session reads are a snapshot of its transaction; a fresh one.
        sqlx::query("select pg_stat_clear_snapshot()")
            .execute(db)
            .await?;
        let transactions: i64 = sqlx::query_scalar(
            "select xact_commit + xact_rollback from pg_stat_database where datname = $1",
        )
        .bind(plan.database)
        .fetch_one(db)
        .await?;
        let statements = if statements {
            let n: Option<i64> = sqlx::query_scalar(
                "select sum(calls)::bigint from pg_stat_statements s \
                 join pg_database d on d.oid = s.dbid where d.datname = $1",
            )
            .bind(plan.database)
            .fetch_one(db)
            .await
            .ok()
            .flatten();
            n.map(|n| n as f64)
        } else {
            None
        };
        let backends: Vec<i32> = sqlx::query_scalar(
            "select pid from pg_stat_activity \
             where datname = $1 and application_name like 'token-store%'",
        )
        .bind(plan.database)
        .fetch_all(db)
        .await?;
        let postgres_cpu = backends
            .iter()
            .filter_map(|pid| sys::process_cpu(*pid as u32).ok())
            .map(|d| d.as_secs_f64())
            .sum();
        Ok(Self {
            at: Instant::now(),
            transactions: transactions as f64,
            statements,
            service_cpu: sys::process_cpu(plan.service.pid())?.as_secs_f64(),
            postgres_cpu,
        })
    }
}

async fn statements_available(db: &PgPool) -> bool {
    sqlx::query("select 1 from pg_stat_statements limit 1")
        .execute(db)
        .await
        .is_ok()
}

async fn due_now(db: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from integration_tokens where next_refresh_at <= now() and status = 'active'",
    )
    .fetch_one(db)
    .await?)
}

/// The keeper's claim with nothing due, as the planner runs it (rolled back: it claims).
async fn claim_statement_ms(db: &PgPool) -> anyhow::Result<f64> {
    let mut tx = db.begin().await?;
    let plan: Vec<String> = sqlx::query_scalar(
        r#"
        explain (analyze, format text)
        update integration_tokens set keeper_claimed_until = now() + interval '1 minute'
        where id in (
            select id from integration_tokens
            where next_refresh_at <= now() and status = 'active'
              and provider = any(array['google'])
              and (keeper_claimed_until is null or keeper_claimed_until < now())
            order by next_refresh_at limit 100
            for update skip locked)
        "#,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    plan.iter()
        .find_map(|l| l.strip_prefix("Execution Time: "))
        .and_then(|t| t.trim_end_matches(" ms").parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no execution time in the plan"))
}
