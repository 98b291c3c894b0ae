//! Which keys a user may read and write: the permissions of all their roles merged into sorted,
//! disjoint intervals, checked as etcd's `range_perm_cache.go` checks them.
//!
//! A permission names one key (`range_end` empty), the range `[key, range_end)`, or every key
//! from `key` on (`range_end` is `"\0"`). A request for one key is allowed when an interval holds
//! the key; a request for a range when one merged interval covers all of it (permissions of
//! several roles that touch or overlap count as one interval, as etcd's interval tree does).

use keel_api::authpb::permission::Type as PermissionType;
use keel_api::authpb::Permission;

/// What a request does to keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// `[begin, end)`; `end` `None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// The interval a permission or a request names (etcd's "affine" intervals).
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            // One key: [key, key + "\0").
            [] => Some([key, &[0]].concat()),
            // From the key on.
            [0] => None,
            end => Some(end.to_vec()),
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    /// `end` is at or past `other_end` (an unbounded end is past everything).
    fn reaches(end: &Option<Vec<u8>>, other_end: &Option<Vec<u8>>) -> bool {
        match (end, other_end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(end), Some(other)) => end >= other,
        }
    }

    fn begins_before_end_of(&self, other: &Interval) -> bool {
        other.end.as_ref().is_none_or(|end| self.begin < *end)
    }

    /// The two share a key (etcd's `Interval` intersection).
    fn intersects(&self, other: &Interval) -> bool {
        self.begins_before_end_of(other) && other.begins_before_end_of(self)
    }
}

/// A user's merged permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPermissions {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl UserPermissions {
    /// Merges `permissions` (of all the user's roles).
    pub fn merge<'a>(permissions: impl IntoIterator<Item = &'a Permission>) -> UserPermissions {
        let mut read = Vec::new();
        let mut write = Vec::new();
        for permission in permissions {
            let interval = Interval::of(&permission.key, &permission.range_end);
            match PermissionType::try_from(permission.perm_type) {
                Ok(PermissionType::Read) => read.push(interval),
                Ok(PermissionType::Write) => write.push(interval),
                Ok(PermissionType::Readwrite) => {
                    read.push(interval.clone());
                    write.push(interval);
                }
                // An unknown type grants nothing.
                Err(_) => {}
            }
        }
        UserPermissions {
            read: disjoint(read),
            write: disjoint(write),
        }
    }

    /// Whether `access` to the key, or the range `[key, range_end)`, is allowed.
    pub fn allows(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let intervals = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        let wanted = Interval::of(key, range_end);
        // Merged intervals neither overlap nor touch, so a covered range meets exactly one.
        let mut meeting = intervals
            .iter()
            .filter(|interval| interval.intersects(&wanted));
        match (meeting.next(), meeting.next()) {
            (Some(interval), None) => {
                interval.begin <= wanted.begin && Interval::reaches(&interval.end, &wanted.end)
            }
            _ => false,
        }
    }
}

/// Sorts and merges overlapping or touching intervals.
fn disjoint(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.sort_by(|a, b| a.begin.cmp(&b.begin));
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for interval in intervals {
        if let Some(last) = merged.last_mut() {
            let touches = last.end.as_ref().is_none_or(|end| interval.begin <= *end);
            if touches {
                if !Interval::reaches(&last.end, &interval.end) {
                    last.end = interval.end;
                }
                continue;
            }
        }
        merged.push(interval);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permission(kind: PermissionType, key: &str, range_end: &[u8]) -> Permission {
        Permission {
            perm_type: kind as i32,
            key: key.as_bytes().to_vec(),
            range_end: range_end.to_vec(),
        }
    }

    /// etcdctl's `--prefix`: the key with its last byte raised.
    fn prefix_end(key: &str) -> Vec<u8> {
        let mut end = key.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        end
    }

    fn check(permissions: &[Permission], cases: &[(Access, &str, &[u8], bool)]) {
        let merged = UserPermissions::merge(permissions);
        for (access, key, range_end, allowed) in cases {
            assert_eq!(
                merged.allows(*access, key.as_bytes(), range_end),
                *allowed,
                "{access:?} {key:?}..{:?} under {permissions:?}",
                String::from_utf8_lossy(range_end)
            );
        }
    }

    // Guards against a single-key permission leaking to its neighbours or to ranges.
    #[test]
    fn a_key_permission_allows_that_key_only() {
        use Access::*;
        check(
            &[permission(PermissionType::Read, "foo", b"")],
            &[
                (Read, "foo", b"", true),
                (Read, "fo", b"", false),
                (Read, "foo0", b"", false),
                (Read, "foo\0", b"", false),
                (Write, "foo", b"", false),
                // The range holding only "foo" is the key itself.
                (Read, "foo", b"foo\0", true),
                (Read, "foo", b"fop", false),
                (Read, "foo", b"\0", false),
            ],
        );
    }

    #[test]
    fn a_range_permission_covers_its_half_open_range() {
        use Access::*;
        check(
            &[permission(PermissionType::Write, "b", b"d")],
            &[
                (Write, "b", b"", true),
                (Write, "c", b"", true),
                (Write, "czzz", b"", true),
                (Write, "d", b"", false),
                (Write, "a", b"", false),
                (Write, "b", b"d", true),
                (Write, "b", b"c", true),
                (Write, "bb", b"d", true),
                (Write, "b", b"e", false),
                (Write, "a", b"c", false),
                (Write, "b", b"\0", false),
                (Read, "c", b"", false),
            ],
        );
    }

    #[test]
    fn a_prefix_permission_covers_the_prefix() {
        use Access::*;
        let end = prefix_end("foo/");
        check(
            &[permission(PermissionType::Readwrite, "foo/", &end)],
            &[
                (Read, "foo/", b"", true),
                (Read, "foo/a/b", b"", true),
                (Write, "foo/x", b"", true),
                (Read, "foo", b"", false),
                (Read, "foo0", b"", false),
                (Read, "foo/", &end, true),
                (Read, "foo/a", &prefix_end("foo/a"), true),
                (Read, "foo", &prefix_end("foo"), false),
            ],
        );
    }

    #[test]
    fn a_from_key_permission_covers_everything_after() {
        use Access::*;
        check(
            &[permission(PermissionType::Read, "m", b"\0")],
            &[
                (Read, "m", b"", true),
                (Read, "zzzz", b"", true),
                (Read, "\u{7f}", b"", true),
                (Read, "l", b"", false),
                (Read, "m", b"\0", true),
                (Read, "n", b"\0", true),
                (Read, "a", b"\0", false),
                (Read, "m", b"z", true),
            ],
        );
    }

    // Two roles' ranges that touch make one range, as in etcd's interval tree; a gap does not.
    #[test]
    fn touching_permissions_merge_and_gaps_do_not() {
        use Access::*;
        check(
            &[
                permission(PermissionType::Read, "a", b"c"),
                permission(PermissionType::Readwrite, "c", b"e"),
                permission(PermissionType::Read, "x", b"z"),
                permission(PermissionType::Read, "b", b"d"),
            ],
            &[
                (Read, "a", b"e", true),
                (Read, "b", b"d", true),
                (Read, "a", b"f", false),
                (Read, "d", b"y", false),
                (Read, "x", b"z", true),
                (Write, "c", b"e", true),
                (Write, "a", b"e", false),
                (Read, "e", b"", false),
                (Read, "y", b"", true),
            ],
        );
    }

    #[test]
    fn all_keys_need_a_permission_from_the_empty_key() {
        use Access::*;
        check(
            &[permission(PermissionType::Read, "", b"\0")],
            &[(Read, "", b"\0", true), (Read, "anything", b"", true)],
        );
        check(
            &[permission(PermissionType::Read, "\0", b"\0")],
            &[(Read, "", b"\0", false), (Read, "a", b"\0", true)],
        );
    }

    #[test]
    fn no_permission_allows_nothing() {
        check(
            &[],
            &[
                (Access::Read, "a", b"", false),
                (Access::Write, "", b"\0", false),
            ],
        );
    }
}
