//! Row lookups of the read path, batched.
//!
//! Reads are most of the traffic and each is one indexed lookup, whose cost in PostgreSQL is
//! almost all per statement (a round trip, bind and execute, two wake-ups), hardly per row.
//! So lookups wait in one queue, and each of a few long-lived connections, whenever it is
//! free, takes everything queued (up to [`MAX_BATCH`]) and answers it with one statement
//! ([`store::find_many`]). Under light load a batch is one lookup, made with the plain
//! query ([`store::find`]); under heavy load the batches grow and PostgreSQL's work per lookup falls.
//! A grant asked for several times in one batch (a refresh storm) is looked up once.
//!
//! The connections are owned by their tasks, outside the request pool: a pool checks every
//! connection it gets back, one more round trip per lookup that this path does not need.
//! Their sessions are named `token-store-reads` (`application_name`). A statement that fails
//! on a connection used before (say, one the server closed while it sat idle) is tried once
//! more on a new connection, as a pool's check would have caught it; a lookup is a read, so
//! trying it again changes nothing. A statement that fails on a new connection fails every
//! lookup of its batch (a 500, never a guess).

use std::sync::Arc;
use std::time::Duration;

use prometheus::Histogram;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::domain::GrantKey;
use crate::metrics::Metrics;
use crate::store::{self, KeyedRow, TokenRow};

/// `application_name` of the reading sessions (`pg_stat_activity`).
pub const APPLICATION_NAME: &str = "token-store-reads";

/// Most lookups answered by one statement.
pub const MAX_BATCH: usize = 64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("database error in a batched lookup: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("timed out connecting to the database")]
    ConnectTimeout,
    #[error("the lookup service has stopped")]
    Stopped,
}

impl LookupError {
    /// The database is away or did not answer in time (see [`store::is_unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(err) => store::is_unavailable(err),
            Self::ConnectTimeout => true,
            Self::Stopped => false,
        }
    }
}

type Reply = Result<Option<TokenRow>, LookupError>;

struct Lookup {
    grant: GrantKey,
    reply: oneshot::Sender<Reply>,
}

/// Queues lookups for the reading connections. Cheap to clone; the connections close when
/// the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Lookups {
    queue: mpsc::Sender<Lookup>,
}

impl Lookups {
    /// Starts `connections` reading tasks, connecting (lazily) as `pool` does at the time.
    pub fn start(
        pool: &PgPool,
        connections: usize,
        connect_timeout: Duration,
        metrics: &Metrics,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(connections.max(1) * MAX_BATCH * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..connections.max(1) {
            tokio::spawn(read_loop(
                receiver.clone(),
                pool.clone(),
                connect_timeout,
                metrics.lookup_batch_size.clone(),
            ));
        }
        Self { queue }
    }

    /// The row of a grant, if there is one.
    pub async fn find(&self, grant: &GrantKey) -> Reply {
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup {
            grant: grant.clone(),
            reply,
        };
        self.queue
            .send(lookup)
            .await
            .map_err(|_| LookupError::Stopped)?;
        answer.await.map_err(|_| LookupError::Stopped)?
    }
}

/// One reading connection: takes what is queued, answers it with one statement, again.
async fn read_loop(
    queue: Arc<Mutex<mpsc::Receiver<Lookup>>>,
    pool: PgPool,
    connect_timeout: Duration,
    batch_size: Histogram,
) {
    let mut connection: Option<PgConnection> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            // Only one task waits on the queue at a time; the others are busy with a statement.
            let mut queue = queue.lock().await;
            if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return; // Every `Lookups` is gone.
            }
            // Let the tasks that are ready now (requests just read) queue their lookups too, so
            // that they share this statement rather than wait for the next: no timer, and
            // nothing to wait for when nothing else is ready.
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(lookup) => batch.push(lookup),
                    Err(_) => break,
                }
            }
        }
        // A caller that went away needs no answer.
        batch.retain(|lookup: &Lookup| !lookup.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        batch_size.observe(batch.len() as f64);
        match look_up(&mut connection, &pool, connect_timeout, &batch).await {
            Ok(rows) => {
                for lookup in batch.drain(..) {
                    let row = rows
                        .iter()
                        .find(|r| r.grant == lookup.grant)
                        .map(|r| r.row.clone());
                    let _ = lookup.reply.send(Ok(row));
                }
            }
            Err(err) => {
                connection = None;
                for lookup in batch.drain(..) {
                    let _ = lookup.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Answers a batch on the task's connection, connecting first if it has none; a failure on
/// a connection used before is tried once more on a new one.
async fn look_up(
    connection: &mut Option<PgConnection>,
    pool: &PgPool,
    connect_timeout: Duration,
    batch: &[Lookup],
) -> Result<Vec<KeyedRow>, LookupError> {
    if let Some(conn) = connection.as_mut() {
        match find_batch(conn, batch).await {
            Ok(rows) => return Ok(rows),
            // A statement or lock timeout: the connection works, a new one would wait as
            // long again.
            Err(err) if store::is_timeout(&err) => {
                return Err(LookupError::Database(Arc::new(err)))
            }
            Err(err) => {
                tracing::warn!(error = %err, "a reading connection failed; reconnecting");
                *connection = None;
            }
        }
    }
    // The pool's options as they are now: the credentials may have been rotated since.
    let options = (*pool.connect_options())
        .clone()
        .application_name(APPLICATION_NAME);
    let connected = tokio::time::timeout(connect_timeout, PgConnection::connect_with(&options))
        .await
        .map_err(|_| LookupError::ConnectTimeout)?
        .map_err(|e| LookupError::Database(Arc::new(e)))?;
    let conn = connection.insert(connected);
    find_batch(conn, batch)
        .await
        .map_err(|e| LookupError::Database(Arc::new(e)))
}

/// One statement for the whole batch: the plain lookup for one grant, else every distinct
/// grant at once.
async fn find_batch(conn: &mut PgConnection, batch: &[Lookup]) -> sqlx::Result<Vec<KeyedRow>> {
    if let [one] = batch {
        let row = store::find(conn, &one.grant).await?;
        return Ok(row
            .map(|row| KeyedRow {
                grant: one.grant.clone(),
                row,
            })
            .into_iter()
            .collect());
    }
    let mut grants: Vec<&GrantKey> = Vec::with_capacity(batch.len());
    for lookup in batch {
        if !grants.contains(&&lookup.grant) {
            grants.push(&lookup.grant);
        }
    }
    store::find_many(conn, &grants).await
}
