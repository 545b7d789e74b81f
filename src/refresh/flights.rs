//! Single flight: concurrent callers with the same key share one run of the work.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::future::{BoxFuture, FutureExt, Shared};

/// A flight's task ended without an outcome: it panicked, or the runtime shut down.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the flight's task ended without an outcome: {0}")]
pub struct Crashed(String);

/// A flight in progress, as its callers await it.
pub type Flight<V> = Shared<BoxFuture<'static, Result<V, Crashed>>>;

/// The flights in progress, one per key. A flight runs as its own task, so a caller that
/// goes away never strands half-done work, and it leaves the map when that task ends,
/// however it ends: with an outcome, a panic or the runtime shutting down (a guard removes
/// it on drop). A flight that stayed behind would answer every later caller with its stale
/// outcome.
pub struct Flights<K, V: Clone> {
    map: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            map: Arc::default(),
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The flight of `key`, started as `start(key)` if there is none; `true` if joined.
    pub fn join_or_start<F>(&self, key: K, start: impl FnOnce(K) -> F) -> (Flight<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(&key) {
            return (flight.clone(), true);
        }
        let landing = Landing {
            map: self.map.clone(),
            key: key.clone(),
        };
        let work = start(key.clone());
        let task = tokio::spawn(async move {
            let _landing = landing;
            work.await
        });
        let flight = async move { task.await.map_err(|e| Crashed(e.to_string())) }
            .boxed()
            .shared();
        map.insert(key, flight.clone());
        (flight, false)
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        lock(&self.map).len()
    }
}

/// Removes its flight from the map when dropped: at the end of the flight's task.
struct Landing<K: Eq + Hash, V: Clone> {
    map: Arc<Mutex<HashMap<K, Flight<V>>>>,
    key: K,
}

impl<K: Eq + Hash, V: Clone> Drop for Landing<K, V> {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.key);
    }
}

/// The map's lock, even if a thread panicked while holding it (the map stays consistent:
/// every change is a single insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flight_whose_task_panics_leaves_the_map_and_the_next_caller_flies_anew() {
        let flights = Flights::<&str, &str>::default();
        let (first, joined) = flights.join_or_start("pair", |_| async {
            panic!("provider arithmetic overflowed");
        });
        assert!(!joined);
        assert!(first.await.is_err());
        assert_eq!(flights.in_flight(), 0, "the failed flight stayed");

        let (second, joined) = flights.join_or_start("pair", |_| async { "fresh" });
        assert!(!joined, "the next caller joined a dead flight");
        assert_eq!(second.await.unwrap(), "fresh");
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn concurrent_callers_join_one_flight() {
        let flights = Flights::<&str, &str>::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (first, _) = flights.join_or_start("pair", |_| async move {
            let _ = released.await;
            "shared"
        });
        let (second, joined) = flights.join_or_start("pair", |_| async { "other" });
        assert!(joined);
        assert_eq!(flights.in_flight(), 1);
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), "shared");
        assert_eq!(second.await.unwrap(), "shared");
        assert_eq!(flights.in_flight(), 0, "the landed flight stayed");
    }

    #[tokio::test]
    async fn other_keys_fly_apart() {
        let flights = Flights::<&str, &str>::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (first, _) = flights.join_or_start("a", |_| async move {
            let _ = released.await;
            "a"
        });
        let (second, joined) = flights.join_or_start("b", |_| async { "b" });
        assert!(!joined);
        assert_eq!(second.await.unwrap(), "b");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), "a");
    }

    #[tokio::test]
    async fn a_caller_going_away_does_not_stop_the_flight() {
        let flights = Flights::<&str, &str>::default();
        let (done, finished) = tokio::sync::oneshot::channel::<&str>();
        let (flight, _) = flights.join_or_start("pair", |_| async move {
            tokio::task::yield_now().await;
            let _ = done.send("ran");
            "ran"
        });
        drop(flight);
        assert_eq!(finished.await.unwrap(), "ran");
    }
}
