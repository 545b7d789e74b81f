//! Each replica's cache of sealed rows, kept true across replicas by PostgreSQL
//! `LISTEN`/`NOTIFY`.
//!
//! A warm read is then no database round trip: the row comes from here and its data key
//! from the unwrap cache. What is cached is the row as stored (ciphertexts and the wrapped
//! data key, never a plaintext token), keyed by its grant, bounded by entries and TTL.
//!
//! How it stays true:
//!
//! - **Every change of a row is announced** on [`store::GRANT_CHANNEL`] by a trigger, inside
//!   the writing transaction: the notification is delivered if and only if the write
//!   commits, whichever code (or operator) wrote it. A task per replica listens and drops
//!   the grant from the cache; the replica that wrote drops it at once too.
//! - **A miss that races a change** never caches the older row: before it reads the
//!   database, a miss takes a [`Ticket`] (the cache's epoch and the grant's stripe of
//!   invalidation counters), and it fills the cache only if neither moved meanwhile. Of two
//!   fills, the newer row ([`SealedGrant::generation`]) wins.
//! - **Staleness is bounded when the notifications stop.** The listening task sends a
//!   heartbeat on the same channel every quarter of `max_staleness`, stamped with when it was
//!   sent. Notifications arrive in commit order, so hearing a heartbeat sent at `t` proves
//!   that every change committed before `t` has been applied. The cache serves only while the
//!   latest heartbeat heard was sent within `max_staleness`. When nothing arrives for
//!   `max_staleness` (the connection was terminated, or hangs silently), the task empties the
//!   cache, listens on a new connection, and the cache serves again once a heartbeat sent on
//!   it comes back.
//!
//! The guarantee: a read served from the cache at time `t` reflects every write committed
//! before `t - max_staleness`, on any replica; normally, within the few milliseconds a
//! notification takes. Reads that the cache cannot serve go to the database, as they would
//! without it.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use moka::ops::compute::Op;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::config::RowCacheConfig;
use crate::domain::{GrantKey, GrantState, ProviderName, TokenStatus, UserId};
use crate::metrics::Metrics;
use crate::refresh::policy::after;
use crate::store;
use crate::vault::SealedGrant;

/// `application_name` of the listening session (`pg_stat_activity`).
pub const APPLICATION_NAME: &str = "token-store-listen";

/// Invalidation counters, one per stripe of grants: a fill checks its grant's stripe only,
/// so changes of other grants rarely turn it away.
const STRIPES: usize = 1024;

/// The sealed-row cache of one replica. Cheap to clone; its listening task stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct RowCache {
    inner: Arc<Inner>,
}

struct Inner {
    rows: Cache<GrantKey, SealedGrant>,
    hasher: RandomState,
    stripes: Box<[AtomicU64]>,
    /// Bumped whenever the whole cache is emptied.
    epoch: AtomicU64,
    /// When the latest heartbeat heard was sent, in microseconds since `origin`; 0 when none
    /// was heard since the cache was last emptied.
    heard: AtomicU64,
    origin: Instant,
    /// This replica's heartbeats carry it; others' are ignored.
    replica: String,
    max_staleness: Duration,
    /// A cached row is served only while its access token is valid beyond this.
    margin: Duration,
    metrics: Metrics,
}

impl fmt::Debug for RowCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowCache")
            .field("entries", &self.inner.rows.entry_count())
            .finish_non_exhaustive()
    }
}

/// What a miss saw before it read the database; see [`RowCache::fill`].
#[derive(Debug)]
pub struct Ticket {
    epoch: u64,
    stripe: usize,
    count: u64,
}

/// What is sent on the channel: a changed grant (by the trigger) or a heartbeat.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Message {
    Grant { user: String, provider: String },
    Heartbeat { heartbeat: String, sent_us: u64 },
}

impl RowCache {
    /// The cache, and its task listening on a connection made as `pool` makes them. It
    /// serves nothing until its first heartbeat comes back.
    pub fn start(
        pool: &PgPool,
        config: &RowCacheConfig,
        margin: Duration,
        metrics: &Metrics,
    ) -> Self {
        let cache = Self::new(config, margin, metrics);
        tokio::spawn(listen(Arc::downgrade(&cache.inner), pool.clone()));
        tokio::spawn(beat(Arc::downgrade(&cache.inner), pool.clone()));
        cache
    }

    /// The cache without its tasks: it serves once it hears a heartbeat.
    fn new(config: &RowCacheConfig, margin: Duration, metrics: &Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                rows: Cache::builder()
                    .max_capacity(config.max_entries)
                    .time_to_live(config.ttl)
                    .build(),
                hasher: RandomState::new(),
                stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
                epoch: AtomicU64::new(0),
                heard: AtomicU64::new(0),
                origin: Instant::now(),
                replica: uuid::Uuid::new_v4().to_string(),
                max_staleness: config.max_staleness,
                margin,
                metrics: metrics.clone(),
            }),
        }
    }

    /// The cached row of a grant, if the cache is serving, holds one, and may answer with
    /// it: the grant is active, without failed refreshes, and `usable` accepts its state. A
    /// dead grant or one cooling down is always the database's to answer.
    pub fn get(
        &self,
        grant: &GrantKey,
        usable: impl FnOnce(&GrantState) -> bool,
    ) -> Option<SealedGrant> {
        let inner = &self.inner;
        if !inner.is_serving() {
            inner.count("bypass");
            return None;
        }
        let Some(row) = inner.rows.get(grant) else {
            inner.count("miss");
            return None;
        };
        let state = row.state();
        let healthy = state.status == TokenStatus::Active && state.refresh_failures == 0;
        if healthy && usable(state) {
            inner.count("hit");
            Some(row)
        } else {
            inner.count("bypass");
            None
        }
    }

    /// The access token is valid beyond the refresh buffer: a cached row that is not must
    /// not be handed out as it is.
    pub fn is_fresh(&self, state: &GrantState) -> bool {
        state.expires_at > after(Utc::now(), self.inner.margin)
    }

    /// Taken before reading `grant` from the database; `None` while the cache is not serving
    /// (what is read then is not cached).
    pub fn ticket(&self, grant: &GrantKey) -> Option<Ticket> {
        let inner = &self.inner;
        if !inner.is_serving() {
            return None;
        }
        let stripe = inner.stripe(grant);
        Some(Ticket {
            epoch: inner.epoch.load(Ordering::SeqCst),
            stripe,
            count: inner.stripes[stripe].load(Ordering::SeqCst),
        })
    }

    /// Caches what a read under `ticket` found (`None`: no row), unless the grant changed or
    /// the cache was emptied since the ticket was taken; an older row never replaces a
    /// newer one.
    pub fn fill(&self, ticket: Ticket, grant: &GrantKey, found: Option<&SealedGrant>) {
        let inner = &self.inner;
        let unchanged = || {
            inner.epoch.load(Ordering::SeqCst) == ticket.epoch
                && inner.stripes[ticket.stripe].load(Ordering::SeqCst) == ticket.count
        };
        let Some(found) = found.filter(|_| unchanged()) else {
            // Gone, or changed meanwhile: whatever is cached is no newer than what was read.
            inner.rows.invalidate(grant);
            return;
        };
        inner
            .rows
            .entry_by_ref(grant)
            .and_compute_with(|cached| match cached {
                Some(cached) if cached.value().generation() >= found.generation() => Op::Nop,
                _ => Op::Put(found.clone()),
            });
        // A change that arrived between the check and the insert was applied before the
        // insert, so take the row out again.
        if !unchanged() {
            inner.rows.invalidate(grant);
        }
    }

    /// Drops a grant's row, in this replica (after its own write, before the notification
    /// of it comes back).
    pub fn invalidate(&self, grant: &GrantKey) {
        self.inner.invalidate(grant);
    }

    /// Rows held now (after pending evictions ran).
    pub fn entries(&self) -> u64 {
        self.inner.rows.run_pending_tasks();
        self.inner.rows.entry_count()
    }
}

impl Inner {
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn is_serving(&self) -> bool {
        let heard = self.heard.load(Ordering::SeqCst);
        let limit = u64::try_from(self.max_staleness.as_micros()).unwrap_or(u64::MAX);
        heard != 0 && self.now_us().saturating_sub(heard) <= limit
    }

    /// How long the listener may wait for its next heartbeat: until `max_staleness` after
    /// the latest one heard, or after it began listening if none was heard since.
    fn silence_left(&self, listening_since: u64) -> Duration {
        let since = self.heard.load(Ordering::SeqCst).max(listening_since);
        let silent = Duration::from_micros(self.now_us().saturating_sub(since));
        self.max_staleness.saturating_sub(silent)
    }

    fn stripe(&self, grant: &GrantKey) -> usize {
        (self.hasher.hash_one(grant) % STRIPES as u64) as usize
    }

    fn invalidate(&self, grant: &GrantKey) {
        self.stripes[self.stripe(grant)].fetch_add(1, Ordering::SeqCst);
        self.rows.invalidate(grant);
    }

    /// Stops serving and empties the cache: notifications may have been missed.
    fn reset(&self) {
        self.heard.store(0, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.rows.invalidate_all();
        self.metrics.row_cache_resets.inc();
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .row_cache_requests
            .with_label_values(&[outcome])
            .inc();
    }

    fn apply(&self, payload: &str) {
        match serde_json::from_str(payload) {
            Ok(Message::Grant { user, provider }) => {
                match (UserId::parse(&user), ProviderName::parse(&provider)) {
                    (Ok(user), Ok(provider)) => self.invalidate(&GrantKey::new(user, provider)),
                    // Not a grant this service could have cached; nothing to drop.
                    _ => tracing::warn!("a change notification names an invalid grant"),
                }
            }
            Ok(Message::Heartbeat { heartbeat, sent_us }) if heartbeat == self.replica => {
                self.heard.fetch_max(sent_us, Ordering::SeqCst);
            }
            Ok(Message::Heartbeat { .. }) => {}
            Err(_) => tracing::warn!("an unreadable notification on the grants channel"),
        }
    }
}

/// Listens for changes until the cache is dropped, on a new connection whenever the last
/// one failed or brought back no heartbeat for `max_staleness`.
async fn listen(cache: Weak<Inner>, pool: PgPool) {
    let mut pause = Duration::from_millis(50);
    loop {
        let Some(max_staleness) = cache.upgrade().map(|c| c.max_staleness) else {
            return;
        };
        // The pool's options as they are now: the credentials may have been rotated since.
        let options = (*pool.connect_options())
            .clone()
            .application_name(APPLICATION_NAME);
        let connecting = store::listen(options, max_staleness);
        let mut listener = match tokio::time::timeout(max_staleness, connecting).await {
            Ok(Ok(listener)) => listener,
            failed => {
                let error = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(%error, "the row cache could not listen for changes; it is not serving");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        pause = Duration::from_millis(50);
        let Some(listening_since) = cache.upgrade().map(|c| c.now_us()) else {
            return;
        };
        loop {
            let Some(wait) = cache.upgrade().map(|c| c.silence_left(listening_since)) else {
                return;
            };
            let received = tokio::time::timeout(wait, listener.try_recv()).await;
            let Some(cache) = cache.upgrade() else {
                return;
            };
            let why = match received {
                Ok(Ok(Some(notification))) => {
                    cache.apply(notification.payload());
                    continue;
                }
                Ok(Ok(None)) => "the connection was closed".to_owned(),
                Ok(Err(err)) => err.to_string(),
                Err(_) => "no heartbeat came back within max_staleness".to_owned(),
            };
            tracing::warn!(reason = %why, "the row cache's listening connection failed; emptying the cache and listening again");
            cache.reset();
            break;
        }
    }
}

/// Sends this replica's heartbeat every quarter of `max_staleness` until the cache is
/// dropped. A heartbeat that cannot be sent is simply missing: the cache stops serving when
/// none has come back for `max_staleness`.
async fn beat(cache: Weak<Inner>, pool: PgPool) {
    let Some(max_staleness) = cache.upgrade().map(|c| c.max_staleness) else {
        return;
    };
    let mut ticks = tokio::time::interval(max_staleness / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = cache.upgrade() else {
            return;
        };
        let message = Message::Heartbeat {
            heartbeat: inner.replica.clone(),
            sent_us: inner.now_us().max(1),
        };
        drop(inner);
        let payload = serde_json::to_string(&message).expect("a heartbeat serializes");
        match tokio::time::timeout(max_staleness, store::notify(&pool, &payload)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "a row-cache heartbeat failed"),
            Err(_) => tracing::debug!("a row-cache heartbeat timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::store::TokenRow;

    fn grant(user: &str) -> GrantKey {
        GrantKey::new(
            UserId::parse(user).unwrap(),
            ProviderName::parse("google").unwrap(),
        )
    }

    fn sealed(grant: &GrantKey, id: i64, version: i64) -> SealedGrant {
        let row = TokenRow {
            id,
            kms_key_id: "key".into(),
            wrapped_data_key: vec![1; 8],
            data_key_created_at: Utc::now(),
            access_token_ct: vec![2; 8],
            refresh_token_ct: None,
            expires_at: Utc::now() + TimeDelta::hours(1),
            scopes: vec![],
            status: TokenStatus::Active,
            version,
            last_refresh_at: None,
            refresh_failure_count: 0,
            last_refresh_error: None,
            refresh_retry_after: None,
            next_refresh_at: None,
        };
        SealedGrant::new(grant.clone(), row).unwrap()
    }

    /// A cache that has just heard its own heartbeat.
    fn serving() -> RowCache {
        let cache = RowCache::new(
            &RowCacheConfig::default(),
            Duration::from_secs(300),
            &Metrics::new(),
        );
        cache.hear_now();
        cache
    }

    impl RowCache {
        fn hear_now(&self) {
            let inner = &self.inner;
            let heartbeat = Message::Heartbeat {
                heartbeat: inner.replica.clone(),
                sent_us: inner.now_us().max(1),
            };
            inner.apply(&serde_json::to_string(&heartbeat).unwrap());
        }

        fn cached(&self, grant: &GrantKey) -> Option<(i64, i64)> {
            self.get(grant, |state| self.is_fresh(state))
                .map(|s| s.generation())
        }
    }

    #[test]
    fn nothing_is_served_before_a_heartbeat_or_after_a_reset() {
        let alice = grant("alice");
        let cache = RowCache::new(&RowCacheConfig::default(), Duration::ZERO, &Metrics::new());
        assert!(
            cache.ticket(&alice).is_none(),
            "not serving: nothing is filled"
        );
        cache.hear_now();
        let ticket = cache.ticket(&alice).unwrap();
        cache.fill(ticket, &alice, Some(&sealed(&alice, 1, 1)));
        assert_eq!(cache.cached(&alice), Some((1, 1)));
        cache.inner.reset();
        assert_eq!(cache.cached(&alice), None);
        cache.hear_now();
        assert_eq!(cache.cached(&alice), None, "a reset empties the cache");
    }

    #[test]
    fn another_replicas_heartbeat_proves_nothing() {
        let cache = RowCache::new(&RowCacheConfig::default(), Duration::ZERO, &Metrics::new());
        cache
            .inner
            .apply(r#"{"heartbeat":"another replica","sent_us":1}"#);
        assert!(!cache.inner.is_serving());
    }

    #[test]
    fn a_heartbeat_older_than_max_staleness_stops_serving() {
        let config = RowCacheConfig {
            max_staleness: Duration::from_millis(20),
            ..RowCacheConfig::default()
        };
        let cache = RowCache::new(&config, Duration::ZERO, &Metrics::new());
        cache.hear_now();
        assert!(cache.inner.is_serving());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!cache.inner.is_serving());
        assert!(cache.inner.silence_left(0).is_zero());
    }

    #[test]
    fn a_change_announced_while_a_miss_reads_keeps_the_older_row_out() {
        let (alice, bob) = (grant("alice"), grant("bob"));
        let cache = serving();
        let ticket = cache.ticket(&alice).unwrap();
        // The row is read (version 1); meanwhile a write commits and is announced.
        cache.inner.apply(r#"{"user":"alice","provider":"google"}"#);
        cache.fill(ticket, &alice, Some(&sealed(&alice, 1, 1)));
        assert_eq!(cache.cached(&alice), None);
        // Another grant's change does not turn a fill away.
        let ticket = cache.ticket(&bob).unwrap();
        cache.fill(ticket, &bob, Some(&sealed(&bob, 2, 1)));
        assert_eq!(cache.cached(&bob), Some((2, 1)));
    }

    #[test]
    fn an_older_read_never_replaces_a_newer_one_and_a_missing_row_drops_it() {
        let alice = grant("alice");
        let cache = serving();
        let (older, newer) = (cache.ticket(&alice).unwrap(), cache.ticket(&alice).unwrap());
        cache.fill(newer, &alice, Some(&sealed(&alice, 1, 2)));
        cache.fill(older, &alice, Some(&sealed(&alice, 1, 1)));
        assert_eq!(cache.cached(&alice), Some((1, 2)));
        // Deleted and stored again: a new row, whatever its version.
        let ticket = cache.ticket(&alice).unwrap();
        cache.fill(ticket, &alice, Some(&sealed(&alice, 7, 1)));
        assert_eq!(cache.cached(&alice), Some((7, 1)));
        let ticket = cache.ticket(&alice).unwrap();
        cache.fill(ticket, &alice, None);
        assert_eq!(cache.cached(&alice), None);
    }

    #[test]
    fn a_row_that_needs_the_database_is_not_served() {
        let alice = grant("alice");
        let cache = RowCache::new(
            &RowCacheConfig::default(),
            Duration::from_secs(2 * 3600),
            &Metrics::new(),
        );
        cache.hear_now();
        let ticket = cache.ticket(&alice).unwrap();
        cache.fill(ticket, &alice, Some(&sealed(&alice, 1, 1)));
        assert_eq!(cache.cached(&alice), None, "expires within the margin");
        let cache = serving();
        let ticket = cache.ticket(&alice).unwrap();
        cache.fill(ticket, &alice, Some(&sealed(&alice, 1, 1)));
        assert_eq!(cache.get(&alice, |_| false).map(|s| s.generation()), None);
        assert_eq!(cache.cached(&alice), Some((1, 1)));
    }
}
