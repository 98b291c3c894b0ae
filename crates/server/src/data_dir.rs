//! The data directory: its layout, the marker that says it is Keel's, and the member's identity.
//!
//! ```text
//! <data-dir>/KEEL    marker and identity (text, `key=value` lines), written first, atomically
//! <data-dir>/wal/    the write-ahead log (the Raft log)
//! <data-dir>/db      the MVCC state (redb)
//! ```
//!
//! A directory that exists, is not empty and has no `KEEL` marker is someone else's (an etcd
//! data directory, say): Keel refuses it and writes nothing there.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

const MARKER: &str = "KEEL";
/// Format 2: the initial members are recorded (format 1 had one member and no list).
const FORMAT: u32 = 2;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data dir {0} is not empty and is not a Keel data directory (it has no KEEL file); refusing to use it \
         (point --data-dir at an empty or new directory)"
    )]
    NotKeel(PathBuf),
    #[error("data dir marker {path} is invalid: {reason}")]
    BadMarker { path: PathBuf, reason: String },
}

/// A member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// Who this member is and whom it started with; fixed when its data directory is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    /// The cluster's founding members (this one included), in id order.
    pub initial_members: Vec<MemberInfo>,
}

/// An opened data directory.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    pub identity: Identity,
    /// True when this start created it.
    pub created: bool,
}

impl DataDir {
    pub fn wal_dir(&self) -> PathBuf {
        self.path.join("wal")
    }

    /// Store snapshots received from the leader, until the store holds them.
    pub fn snap_dir(&self) -> PathBuf {
        self.path.join("snap")
    }

    pub fn db_path(&self) -> PathBuf {
        self.path.join("db")
    }

    /// Whether `path` holds a Keel data directory already.
    pub fn exists(path: &Path) -> bool {
        path.join(MARKER).exists()
    }

    /// Opens the directory at `path`, or creates it with `new_identity` when it is new or empty.
    pub fn open_or_create(
        path: &Path,
        new_identity: impl FnOnce() -> Identity,
    ) -> Result<DataDir, DataDirError> {
        let io = |source| DataDirError::Io {
            path: path.to_path_buf(),
            source,
        };
        let marker = path.join(MARKER);
        if marker.exists() {
            let identity = read_marker(&marker)?;
            return Ok(DataDir {
                path: path.to_path_buf(),
                identity,
                created: false,
            });
        }
        if path.exists() {
            let mut entries = fs::read_dir(path).map_err(io)?;
            if entries.next().is_some() {
                return Err(DataDirError::NotKeel(path.to_path_buf()));
            }
        }
        fs::create_dir_all(path).map_err(io)?;
        let identity = new_identity();
        write_marker(&marker, &identity).map_err(io)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            identity,
            created: true,
        })
    }
}

fn write_marker(marker: &Path, identity: &Identity) -> std::io::Result<()> {
    let temporary = marker.with_extension("tmp");
    let mut file = fs::File::create(&temporary)?;
    write!(
        file,
        "format={FORMAT}\nname={}\nmember_id={:x}\ncluster_id={:x}\n",
        identity.name, identity.member_id, identity.cluster_id
    )?;
    for member in &identity.initial_members {
        writeln!(
            file,
            "member={:x} {} {}",
            member.id,
            member.name,
            member.peer_urls.join(",")
        )?;
    }
    file.sync_all()?;
    fs::rename(&temporary, marker)?;
    fs::File::open(marker.parent().expect("the marker is inside the data dir"))?.sync_all()
}

fn read_marker(marker: &Path) -> Result<Identity, DataDirError> {
    let bad = |reason: String| DataDirError::BadMarker {
        path: marker.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(marker).map_err(|source| DataDirError::Io {
        path: marker.to_path_buf(),
        source,
    })?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
            })
            .ok_or_else(|| bad(format!("no {name}")))
    };
    let hex = |name: &str| {
        u64::from_str_radix(field(name)?, 16).map_err(|error| bad(format!("{name}: {error}")))
    };
    let format: u32 = field("format")?
        .parse()
        .map_err(|error| bad(format!("format: {error}")))?;
    if format != FORMAT {
        return Err(bad(format!(
            "format {format}; this build reads format {FORMAT}"
        )));
    }
    let mut initial_members = Vec::new();
    for line in text.lines().filter_map(|line| line.strip_prefix("member=")) {
        let mut parts = line.splitn(3, ' ');
        let (Some(id), Some(name), Some(urls)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(format!("member line {line:?}")));
        };
        let id = u64::from_str_radix(id, 16).map_err(|error| bad(format!("member id: {error}")))?;
        let peer_urls = urls.split(',').map(String::from).collect();
        initial_members.push(MemberInfo {
            id,
            name: name.to_string(),
            peer_urls,
        });
    }
    if initial_members.is_empty() {
        return Err(bad("no members".into()));
    }
    Ok(Identity {
        name: field("name")?.to_string(),
        member_id: hex("member_id")?,
        cluster_id: hex("cluster_id")?,
        initial_members,
    })
}

/// A stable 64-bit id from text (FNV-1a), for member and cluster ids derived from the
/// configuration, as etcd derives them from peer URLs and the cluster token.
pub fn stable_id(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Zero means "no member" in etcd's API.
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            name: "n1".into(),
            member_id: 0xabc,
            cluster_id: 0xdef,
            initial_members: vec![MemberInfo {
                id: 0xabc,
                name: "n1".into(),
                peer_urls: vec!["http://a:1".into()],
            }],
        }
    }

    #[test]
    fn a_new_directory_is_created_and_reopened_with_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let created = DataDir::open_or_create(&path, identity).unwrap();
        assert!(created.created);
        let opened =
            DataDir::open_or_create(&path, || panic!("must not make a new identity")).unwrap();
        assert!(!opened.created);
        assert_eq!(opened.identity, identity());
    }

    #[test]
    fn a_foreign_directory_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("member/wal")).unwrap();
        let error = DataDir::open_or_create(dir.path(), identity).unwrap_err();
        assert!(matches!(error, DataDirError::NotKeel(_)), "{error}");
        assert!(!dir.path().join(MARKER).exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
