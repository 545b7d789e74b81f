//! Scratch PostgreSQL databases: one per test, dropped when its guard goes.

use anyhow::Context;
use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::cleanup::OnDrop;
use crate::env::database_server_url;

/// Every database a test or the benchmark's smoke run creates is named
/// `ts_test_<purpose>_<random>`, so leftovers are easy to find:
/// `select datname from pg_database where datname like 'ts\_test\_%'`.
pub const PREFIX: &str = "ts_test_";

/// A database on the tests' PostgreSQL server, dropped (`drop database ... with (force)`,
/// which first ends every session still connected to it, the service's pools included)
/// when this guard is dropped, also when the test fails.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    drop: OnDrop,
}

impl TestDatabase {
    /// A new database with the service's migrations applied.
    ///
    /// `purpose` (lowercase letters, digits and `_`) goes into the name. Panics if
    /// PostgreSQL cannot be reached: this is for tests.
    pub async fn create(purpose: &str) -> Self {
        let database = Self::create_empty(purpose).await;
        let pool = PgPool::connect(&database.url)
            .await
            .expect("connecting to the new database");
        token_store::store::migrate(&pool)
            .await
            .expect("migrating the new database");
        pool.close().await;
        database
    }

    /// A new database without tables (for a binary under test to migrate).
    pub async fn create_empty(purpose: &str) -> Self {
        let database = Self::reserve(purpose);
        let mut admin = admin_connection(&server_of(&database.url))
            .await
            .expect("connecting to PostgreSQL (is it running? see README)");
        admin
            .execute(format!(r#"create database "{}""#, database.name).as_str())
            .await
            .expect("creating a test database");
        database
    }

    /// A fresh name only, for a program under test that creates the database itself (the
    /// benchmark's smoke run). The database is dropped, if it exists, all the same.
    pub fn reserve(purpose: &str) -> Self {
        assert!(
            purpose
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "a database purpose is lowercase letters, digits and '_': {purpose:?}"
        );
        let random = uuid::Uuid::new_v4().simple().to_string();
        // PostgreSQL keeps 63 bytes of a name.
        let name: String = format!("{PREFIX}{purpose}_{random}")
            .chars()
            .take(63)
            .collect();
        Self::guard(&database_server_url(), name)
    }

    /// Drops database `name` on `server_url` if it exists and creates it anew (empty): a run
    /// under a fixed name (the benchmark's, which [`keep`](Self::keep)s it afterwards).
    pub async fn recreate(server_url: &str, name: &str) -> anyhow::Result<Self> {
        let mut admin = admin_connection(server_url).await?;
        admin
            .execute(format!(r#"drop database if exists "{name}" with (force)"#).as_str())
            .await
            .with_context(|| format!("dropping database {name}"))?;
        admin
            .execute(format!(r#"create database "{name}""#).as_str())
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(Self::guard(server_url, name.to_owned()))
    }

    fn guard(server_url: &str, name: String) -> Self {
        let server = server_url.trim_end_matches('/').to_owned();
        let url = format!("{server}/{name}");
        let drop = {
            let name = name.clone();
            OnDrop::new(format!("dropping database {name}"), move || async move {
                let mut admin = admin_connection(&server).await?;
                // `with (force)` (PostgreSQL 13 and later) ends the sessions still
                // connected: the service's pools, a test's own connections.
                admin
                    .execute(format!(r#"drop database if exists "{name}" with (force)"#).as_str())
                    .await?;
                admin.close().await?;
                Ok(())
            })
        };
        Self { name, url, drop }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `postgres://.../<name>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Leaves the database in place when this guard is dropped.
    pub fn keep(&mut self) {
        self.drop.disarm();
    }
}

/// The server part of a database URL (everything before the last `/`).
fn server_of(url: &str) -> String {
    url.rsplit_once('/')
        .map_or(url, |(server, _)| server)
        .to_owned()
}

/// A connection to the server's `postgres` database, to create and drop others.
async fn admin_connection(server_url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(&format!("{server_url}/postgres"))
        .await
        .with_context(|| format!("connecting to PostgreSQL at {server_url}"))
}
