//! Leases: the in-memory side of etcd's lessor. Grants and revokes go through the log (their
//! durable record is the store's `leases` table); keep-alives and expiry don't: only the member
//! that decides expiry (the leader; today the one member) keeps deadlines, and it expires a
//! lease by proposing its revocation.
//!
//! Deadlines are refreshed to a full TTL whenever a member starts deciding expiry (at start, and
//! later on becoming leader), as etcd does, so no lease expires because of a restart or an
//! election.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_storage::mvcc::LeaseKeys;

/// etcd's largest TTL (`lease.MaxLeaseTTL`), in seconds.
pub const LEASE_TTL_SECS_MAX: i64 = 9_000_000_000;

#[derive(Debug)]
struct Lease {
    ttl_secs: i64,
    deadline: Instant,
    /// Keys put with this lease. A key later deleted or put with another lease may linger
    /// here; readers check each key's record, which is the truth.
    keys: BTreeSet<Vec<u8>>,
}

/// What TimeToLive reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub remaining_secs: i64,
    pub granted_secs: i64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub struct Lessor {
    leases: Mutex<HashMap<i64, Lease>>,
    ttl_secs_min: i64,
}

fn deadline_after(ttl_secs: i64) -> Instant {
    // A TTL too large for the clock never expires in practice.
    Instant::now()
        .checked_add(Duration::from_secs(ttl_secs.max(0) as u64))
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Lessor {
    /// `ttl_secs_min` is etcd's minimum TTL: 1.5 election timeouts, rounded up to seconds.
    pub fn new(ttl_secs_min: i64, stored: Vec<LeaseKeys>) -> Lessor {
        let leases = stored
            .into_iter()
            .map(|LeaseKeys { lease, keys }| {
                let state = Lease {
                    ttl_secs: lease.ttl_secs,
                    deadline: deadline_after(lease.ttl_secs),
                    keys: keys.into_iter().collect(),
                };
                (lease.id, state)
            })
            .collect();
        Lessor {
            leases: Mutex::new(leases),
            ttl_secs_min,
        }
    }

    /// Replaces every lease with `stored` (a store snapshot was installed), each with a full
    /// TTL.
    pub fn reset(&self, stored: Vec<LeaseKeys>) {
        let fresh = Lessor::new(self.ttl_secs_min, stored);
        let leases = std::mem::take(&mut *fresh.lock());
        *self.lock() = leases;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Lease>> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The TTL a grant gets: at least the minimum.
    pub fn effective_ttl_secs(&self, requested_secs: i64) -> i64 {
        requested_secs.max(self.ttl_secs_min)
    }

    pub fn exists(&self, id: i64) -> bool {
        self.lock().contains_key(&id)
    }

    pub fn granted(&self, id: i64, ttl_secs: i64) {
        self.lock().insert(
            id,
            Lease {
                ttl_secs,
                deadline: deadline_after(ttl_secs),
                keys: BTreeSet::new(),
            },
        );
    }

    /// Forgets a lease; returns the keys it may hold.
    pub fn revoked(&self, id: i64) -> Vec<Vec<u8>> {
        self.lock()
            .remove(&id)
            .map(|lease| lease.keys.into_iter().collect())
            .unwrap_or_default()
    }

    /// The keys a lease may hold (check each key's record before acting on it).
    pub fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.lock()
            .get(&id)
            .map(|lease| lease.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn attach(&self, id: i64, key: &[u8]) {
        if let Some(lease) = self.lock().get_mut(&id) {
            lease.keys.insert(key.to_vec());
        }
    }

    /// A keep-alive: a full TTL from now. None when the lease is unknown or already expired
    /// (its revocation is on its way).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut leases = self.lock();
        let lease = leases.get_mut(&id)?;
        if lease.deadline <= Instant::now() {
            return None;
        }
        lease.deadline = deadline_after(lease.ttl_secs);
        Some(lease.ttl_secs)
    }

    /// Remaining and granted TTL, and the keys (filtered by `holds`, which checks a key's
    /// record still names this lease).
    pub fn status(&self, id: i64, holds: impl Fn(&[u8]) -> bool) -> Option<LeaseStatus> {
        let (remaining_secs, granted_secs, keys) = {
            let leases = self.lock();
            let lease = leases.get(&id)?;
            let remaining = lease
                .deadline
                .saturating_duration_since(Instant::now())
                .as_secs() as i64;
            (
                remaining,
                lease.ttl_secs,
                lease.keys.iter().cloned().collect::<Vec<_>>(),
            )
        };
        let keys = keys.into_iter().filter(|key| holds(key)).collect();
        Some(LeaseStatus {
            remaining_secs,
            granted_secs,
            keys,
        })
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Leases past their deadline, at most `count_max` of them.
    pub fn expired(&self, count_max: usize) -> Vec<i64> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .take(count_max)
            .collect()
    }

    /// Gives every lease a full TTL from now: this member starts deciding expiry.
    pub fn refresh_all(&self) {
        for lease in self.lock().values_mut() {
            lease.deadline = deadline_after(lease.ttl_secs);
        }
    }
}

/// etcd's minimum lease TTL for an election timeout: 1.5 timeouts, rounded up to seconds.
pub fn ttl_secs_min(election_timeout_ms: u64) -> i64 {
    (election_timeout_ms * 3 / 2).div_ceil(1000) as i64
}

/// What TimeToLive answers on the member keeping the lease's deadline (the header is the
/// caller's to fill): remaining and granted TTL and, if asked, the keys that still hold it; an
/// unknown lease is TTL -1, not an error, as in etcd.
pub fn time_to_live(
    lessor: &Lessor,
    store: &keel_storage::mvcc::Store,
    request: &keel_api::etcdserverpb::LeaseTimeToLiveRequest,
) -> keel_api::etcdserverpb::LeaseTimeToLiveResponse {
    use keel_api::etcdserverpb::LeaseTimeToLiveResponse;
    use keel_storage::mvcc::{RangeEnd, RangeOptions};
    let id = request.id;
    let holds = |key: &[u8]| {
        store
            .range(key, RangeEnd::Single, &RangeOptions::default())
            .is_ok_and(|found| found.kvs.first().is_some_and(|kv| kv.lease == id))
    };
    match lessor.status(id, holds) {
        Some(status) => LeaseTimeToLiveResponse {
            header: None,
            id,
            ttl: status.remaining_secs,
            granted_ttl: status.granted_secs,
            keys: if request.keys {
                status.keys
            } else {
                Vec::new()
            },
        },
        None => LeaseTimeToLiveResponse {
            header: None,
            id,
            ttl: -1,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_ttl_follows_the_election_timeout_like_etcd() {
        assert_eq!(ttl_secs_min(1000), 2);
        assert_eq!(ttl_secs_min(5000), 8);
        assert_eq!(ttl_secs_min(100), 1);
    }

    #[test]
    fn renew_refreshes_and_expiry_is_reported() {
        let lessor = Lessor::new(0, Vec::new());
        lessor.granted(1, 100);
        lessor.granted(2, 0);
        assert_eq!(lessor.renew(1), Some(100));
        assert_eq!(
            lessor.renew(2),
            None,
            "an expired lease can't be kept alive"
        );
        assert_eq!(lessor.renew(3), None);
        assert_eq!(lessor.expired(10), [2]);
        lessor.attach(1, b"k");
        let status = lessor.status(1, |_| true).unwrap();
        assert_eq!((status.granted_secs, status.keys.len()), (100, 1));
        assert!(status.remaining_secs >= 99);
        assert_eq!(lessor.revoked(1), [b"k".to_vec()]);
        assert!(!lessor.exists(1));
    }
}
