//! Single-flight: concurrent requests for the same key share one execution.
//!
//! The first caller for a key runs its future; callers arriving while it runs wait for the same
//! result. If the running caller is cancelled (its future dropped), one of the waiters takes over,
//! so nobody waits forever. Once the result is delivered the key is forgotten: a later call runs
//! again (the cache itself serves repeated reads).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// Deduplicates concurrent work by key. `V` is cloned to every waiter; use `Arc` or `Bytes`.
pub struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` unless a call for `key` is already running, in which case waits for its result.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut m = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(key.clone()).or_default().clone()
        };
        let guard = Forget {
            flights: &self.flights,
            key: &key,
            cell: &cell,
        };
        let v = cell.get_or_init(work).await.clone();
        drop(guard);
        v
    }

    /// Number of keys with work in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Removes the flight once its result is out (or its last waiter gave up), so the map never
/// grows and a later call runs again.
struct Forget<'a, K: Eq + Hash, V> {
    flights: &'a Mutex<HashMap<K, Arc<OnceCell<V>>>>,
    key: &'a K,
    cell: &'a Arc<OnceCell<V>>,
}

impl<K: Eq + Hash, V> Drop for Forget<'_, K, V> {
    fn drop(&mut self) {
        let mut m = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(self.key) {
            // Forget it when it is ours and either done, or nobody else holds it any more.
            if Arc::ptr_eq(c, self.cell) && (self.cell.initialized() || Arc::strong_count(c) <= 2) {
                m.remove(self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_one_run() {
        let sf = Arc::new(SingleFlight::<u32, u64>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (sf, runs) = (sf.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                sf.run(7, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    42
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn cancelled_leader_hands_over() {
        let sf = Arc::new(SingleFlight::<u32, u64>::new());
        let sf2 = sf.clone();
        let leader = tokio::spawn(async move {
            sf2.run(1, || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                0
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sf3 = sf.clone();
        let follower = tokio::spawn(async move { sf3.run(1, || async { 5 }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let v = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("follower must not hang after the leader was cancelled")
            .unwrap();
        assert_eq!(v, 5);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn later_calls_run_again() {
        let sf = SingleFlight::<u32, u32>::new();
        assert_eq!(sf.run(1, || async { 1 }).await, 1);
        assert_eq!(sf.run(1, || async { 2 }).await, 2);
    }
}
