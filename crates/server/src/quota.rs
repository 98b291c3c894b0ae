//! The backend space quota (`--quota-backend-bytes`) and the NOSPACE alarm, as etcd has them:
//! a write that would take the database past the quota raises the alarm, and while it is
//! raised every put (alone or in a transaction) fails with `database space exceeded`. Reads,
//! deletes and compaction go on, so an operator can free space, defragment and disarm.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use keel_api::etcdserverpb::request_op::Request as Op;
use keel_api::etcdserverpb::TxnRequest;
use keel_api::EtcdError;

use crate::request::Request;

/// etcd's default quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug)]
pub struct Quota {
    bytes_max: u64,
    db_path: PathBuf,
    no_space: AtomicBool,
    /// The file size as last read, and when (ms after `started`): a write checks the quota
    /// against a size at most `SIZE_REFRESH_MS` old instead of a stat per request (etcd
    /// checks an in-memory size; a burst can pass the quota by that much, as in etcd, whose
    /// check also estimates).
    size_bytes: AtomicU64,
    size_read_at_ms: AtomicU64,
    started: Instant,
}

/// How stale the size a write is checked against may be.
const SIZE_REFRESH_MS: u64 = 100;

impl Quota {
    /// `quota_backend_bytes` as etcd reads it: 0 is the default, negative disables the quota.
    pub fn new(quota_backend_bytes: i64, db_path: PathBuf) -> Quota {
        let bytes_max = match quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            negative if negative < 0 => u64::MAX,
            bytes => bytes as u64,
        };
        Quota {
            bytes_max,
            db_path,
            no_space: AtomicBool::new(false),
            size_bytes: AtomicU64::new(0),
            // Never read yet: the first check reads the file.
            size_read_at_ms: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        }
    }

    /// Size of the database file.
    pub fn db_size_bytes(&self) -> u64 {
        std::fs::metadata(&self.db_path).map_or(0, |metadata| metadata.len())
    }

    /// Refuses a request that writes when the alarm is raised or the write would pass the quota
    /// (and then raises the alarm).
    pub fn check(&self, request: &Request) -> Result<(), EtcdError> {
        let cost = match request {
            Request::Put(put) => put.key.len() + put.value.len(),
            Request::Txn(txn) => txn_cost(txn),
            // etcd charges a grant for the lease record it will store.
            Request::LeaseGrant(_) => 16,
            Request::DeleteRange(_)
            | Request::Compaction(_)
            | Request::LeaseRevoke(_)
            | Request::Auth(_)
            | Request::MemberAttributes(_)
            | Request::MemberUpdate(_) => 0,
        } as u64;
        if cost == 0 {
            return Ok(());
        }
        if self.no_space.load(Ordering::Relaxed) {
            return Err(EtcdError::NoSpace);
        }
        if self.recent_db_size_bytes().saturating_add(cost) > self.bytes_max {
            tracing::warn!(
                quota_bytes = self.bytes_max,
                "database space exceeded: NOSPACE alarm raised"
            );
            self.no_space.store(true, Ordering::Relaxed);
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    fn recent_db_size_bytes(&self) -> u64 {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let read_at = self.size_read_at_ms.load(Ordering::Relaxed);
        if read_at != u64::MAX && now_ms.saturating_sub(read_at) < SIZE_REFRESH_MS {
            return self.size_bytes.load(Ordering::Relaxed);
        }
        let size = self.db_size_bytes();
        self.size_bytes.store(size, Ordering::Relaxed);
        self.size_read_at_ms.store(now_ms, Ordering::Relaxed);
        size
    }

    pub fn no_space(&self) -> bool {
        self.no_space.load(Ordering::Relaxed)
    }

    pub fn set_no_space(&self, raised: bool) {
        self.no_space.store(raised, Ordering::Relaxed);
    }
}

fn txn_cost(txn: &TxnRequest) -> usize {
    txn.success
        .iter()
        .chain(&txn.failure)
        .map(|op| match &op.request {
            Some(Op::RequestPut(put)) => put.key.len() + put.value.len(),
            Some(Op::RequestTxn(nested)) => txn_cost(nested),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use keel_api::etcdserverpb::{DeleteRangeRequest, PutRequest};

    use super::*;

    #[test]
    fn a_write_past_the_quota_raises_the_alarm_and_deletes_still_pass() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::write(&db, vec![0u8; 1000]).unwrap();
        let quota = Quota::new(1100, db);
        let put = |bytes: usize| {
            Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![1; bytes],
                ..Default::default()
            })
        };
        assert_eq!(quota.check(&put(10)), Ok(()));
        assert_eq!(quota.check(&put(200)), Err(EtcdError::NoSpace));
        assert!(quota.no_space());
        assert_eq!(
            quota.check(&put(1)),
            Err(EtcdError::NoSpace),
            "the alarm refuses even small puts"
        );
        assert_eq!(
            quota.check(&Request::DeleteRange(DeleteRangeRequest::default())),
            Ok(())
        );
        quota.set_no_space(false);
        assert_eq!(quota.check(&put(1)), Ok(()));
    }
}
