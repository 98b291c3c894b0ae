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
        self.read_state().auth_version
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
        let table = self.txn.open_table(table.definition())?;
        let record = table.get(name)?.map(|bytes| bytes.value().to_vec());
        Ok(record)
    }

    /// Every record of `table`, in name order.
    pub fn auth_list(&self, table: AuthTable) -> Result<Vec<(String, Vec<u8>)>, MvccError> {
        list(&self.txn.open_table(table.definition())?)
    }

    pub fn auth_put(
        &mut self,
        table: AuthTable,
        name: &str,
        record: &[u8],
    ) -> Result<(), MvccError> {
        self.txn
            .open_table(table.definition())?
            .insert(name, record)?;
        self.auth_changes = true;
        Ok(())
    }

    pub fn auth_remove(&mut self, table: AuthTable, name: &str) -> Result<(), MvccError> {
        self.txn.open_table(table.definition())?.remove(name)?;
        self.auth_changes = true;
        Ok(())
    }

    /// Whether authentication is enabled, and the auth revision (0: never changed).
    pub fn auth_state(&self) -> Result<(bool, u64), MvccError> {
        let meta = self.txn.open_table(META)?;
        let value = |name| -> Result<u64, MvccError> {
            Ok(meta.get(name)?.map_or(0, |value| value.value()))
        };
        Ok((
            value(backend::META_AUTH_ENABLED)? == 1,
            value(backend::META_AUTH_REVISION)?,
        ))
    }

    pub fn set_auth_state(&mut self, enabled: bool, revision: u64) -> Result<(), MvccError> {
        let mut meta = self.txn.open_table(META)?;
        meta.insert(backend::META_AUTH_ENABLED, u64::from(enabled))?;
        meta.insert(backend::META_AUTH_REVISION, revision)?;
        self.auth_changes = true;
        Ok(())
    }
}
