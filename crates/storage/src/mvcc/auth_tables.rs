//! The auth store's records: users, roles, the auth switch and the auth revision.
//!
//! The store keeps them as opaque bytes under their names (the server encodes `authpb` records)
//! and changes them in the write transaction of the log entry that changes them, so the
//! consistent index covers them exactly as it covers keys.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::backend::{self, AUTH_ROLES, AUTH_USERS, META};
use super::{MvccError, Store, WriteTxn};

/// One of the auth store's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthTable {
    Users,
    Roles,
}

impl AuthTable {
    fn definition(self) -> redb::TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            AuthTable::Users => AUTH_USERS,
            AuthTable::Roles => AUTH_ROLES,
        }
    }
}

/// The whole auth state as stored, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredAuth {
    pub enabled: bool,
    /// 0 when the auth store never changed.
    pub revision: u64,
    /// Users by name, in name order, as encoded by the server.
    pub users: Vec<(String, Vec<u8>)>,
    /// Roles by name, in name order.
    pub roles: Vec<(String, Vec<u8>)>,
}

/// Creates the auth tables when the store is opened, so readers can always open them.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), MvccError> {
    txn.open_table(AUTH_USERS)?;
    txn.open_table(AUTH_ROLES)?;
    Ok(())
}

fn list<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
) -> Result<Vec<(String, Vec<u8>)>, MvccError> {
    let mut records = Vec::new();
    for record in table.iter()? {
        let (name, bytes) = record?;
        records.push((name.value().to_owned(), bytes.value().to_vec()));
    }
    Ok(records)
}

impl Store {
    /// Counts the commits that changed auth records since the store was opened: when it has not
    /// moved, neither has the auth state.
    pub fn auth_version(&self) -> u64 {
        self.auth_version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads the auth state, with the [`Store::auth_version`] it is current for.
    pub fn read_auth(&self) -> Result<(u64, StoredAuth), MvccError> {
        // The version is read under the state lock, before the read transaction starts: every
        // commit it counts is visible to the transaction (a later one at worst makes the caller
        // read again).
        let version = self.auth_version();
        let read = self.db.begin_read()?;
        let meta = read.open_table(META)?;
        let value = |name| -> Result<u64, MvccError> {
            Ok(meta.get(name)?.map_or(0, |value| value.value()))
        };
        let auth = StoredAuth {
            enabled: value(backend::META_AUTH_ENABLED)? == 1,
            revision: value(backend::META_AUTH_REVISION)?,
            users: list(&read.open_table(AUTH_USERS)?)?,
            roles: list(&read.open_table(AUTH_ROLES)?)?,
        };
        Ok((version, auth))
    }
}

impl WriteTxn<'_> {
    /// The record named `name`, as this transaction sees it.
    pub fn auth_get(&self, table: AuthTable, name: &str) -> Result<Option<Vec<u8>>, MvccError> {
        let table = self.redb()?.open_table(table.definition())?;
        let record = table.get(name)?.map(|bytes| bytes.value().to_vec());
        Ok(record)
    }

    /// Every record of `table`, in name order.
    pub fn auth_list(&self, table: AuthTable) -> Result<Vec<(String, Vec<u8>)>, MvccError> {
        list(&self.redb()?.open_table(table.definition())?)
    }

    pub fn auth_put(
        &mut self,
        table: AuthTable,
        name: &str,
        record: &[u8],
    ) -> Result<(), MvccError> {
        self.redb()?
            .open_table(table.definition())?
            .insert(name, record)?;
        self.auth_changes = true;
        Ok(())
    }

    pub fn auth_remove(&mut self, table: AuthTable, name: &str) -> Result<(), MvccError> {
        self.redb()?.open_table(table.definition())?.remove(name)?;
        self.auth_changes = true;
        Ok(())
    }

    /// Whether authentication is enabled, and the auth revision (0: never changed).
    pub fn auth_state(&self) -> Result<(bool, u64), MvccError> {
        let meta = self.redb()?.open_table(META)?;
        let value = |name| -> Result<u64, MvccError> {
            Ok(meta.get(name)?.map_or(0, |value| value.value()))
        };
        Ok((
            value(backend::META_AUTH_ENABLED)? == 1,
            value(backend::META_AUTH_REVISION)?,
        ))
    }

    pub fn set_auth_state(&mut self, enabled: bool, revision: u64) -> Result<(), MvccError> {
        {
            let mut meta = self.redb()?.open_table(META)?;
            meta.insert(backend::META_AUTH_ENABLED, u64::from(enabled))?;
            meta.insert(backend::META_AUTH_REVISION, revision)?;
        }
        self.auth_changes = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Guards against: auth records lost on reopen, an auth-only entry not committed (the lease
    //! flag's bug class), readers not told that the auth state moved, and version 1 stores
    //! refused after the upgrade.

    use super::*;
    use crate::mvcc::RangeOptions;

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("db")).unwrap()
    }

    #[test]
    fn auth_records_commit_alone_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(store.read_auth().unwrap(), (0, StoredAuth::default()));
        let mut txn = store.write(1).unwrap();
        txn.auth_put(AuthTable::Users, "alice", b"user record")
            .unwrap();
        txn.auth_put(AuthTable::Roles, "r", b"role record").unwrap();
        txn.set_auth_state(true, 3).unwrap();
        assert_eq!(
            txn.auth_get(AuthTable::Users, "alice").unwrap().unwrap(),
            b"user record"
        );
        // No key changed, yet the transaction commits, and the revision stays.
        assert_eq!(txn.commit(false).unwrap(), 1);
        assert_eq!(store.auth_version(), 1);
        // A transaction dropped without commit changes nothing.
        let mut txn = store.write(2).unwrap();
        txn.auth_remove(AuthTable::Users, "alice").unwrap();
        drop(txn);
        assert_eq!(store.auth_version(), 1);
        store.sync().unwrap();
        drop(store);

        let store = open(&dir);
        let (_, auth) = store.read_auth().unwrap();
        assert_eq!(
            auth,
            StoredAuth {
                enabled: true,
                revision: 3,
                users: vec![("alice".into(), b"user record".to_vec())],
                roles: vec![("r".into(), b"role record".to_vec())],
            }
        );
        assert_eq!(store.consistent_index(), 1);
        let found = store
            .range(
                b"alice",
                crate::mvcc::RangeEnd::Single,
                &RangeOptions::default(),
            )
            .unwrap();
        assert!(found.kvs.is_empty(), "auth records are not keys");
    }

    #[test]
    fn a_version_1_store_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = redb::Database::create(dir.path().join("db")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(backend::META_SCHEMA_VERSION, 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = open(&dir);
        assert_eq!(store.read_auth().unwrap().1, StoredAuth::default());
        drop(store);
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let read = db.begin_read().unwrap();
        let version = read.open_table(META).unwrap();
        let version = version.get(backend::META_SCHEMA_VERSION).unwrap().unwrap();
        assert_eq!(version.value(), backend::SCHEMA_VERSION);
    }
}
