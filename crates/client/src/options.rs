//! Builders for the options of each call, in the style of etcd's Go client (`clientv3.OpOption`).

use keel_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

/// The smallest key after every key with `prefix` (etcd's `GetPrefixRangeEnd`); `"\0"` when the
/// prefix is empty or all 0xff, meaning "every key from here on".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Which keys a get or delete covers, besides the key itself.
#[derive(Debug, Clone, Default)]
enum Span {
    /// The key alone, or `[key, end)` when the request's `range_end` is set.
    #[default]
    Key,
    Prefix,
    FromKey,
}

impl Span {
    /// The request's `range_end` for `key` under etcd's conventions.
    fn range_end(&self, key: &[u8], explicit_end: Vec<u8>) -> Vec<u8> {
        match self {
            Span::Key => explicit_end,
            Span::Prefix => prefix_end(key),
            Span::FromKey => vec![0],
        }
    }
}

/// Options of a get (a Range request).
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    request: RangeRequest,
    span: Span,
}

impl GetOptions {
    pub fn new() -> GetOptions {
        GetOptions::default()
    }

    /// Every key starting with the key.
    pub fn with_prefix(mut self) -> GetOptions {
        self.span = Span::Prefix;
        self
    }

    /// Every key from the key on.
    pub fn with_from_key(mut self) -> GetOptions {
        self.span = Span::FromKey;
        self
    }

    /// Keys in `[key, end)`.
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> GetOptions {
        self.request.range_end = end.into();
        self
    }

    pub fn with_limit(mut self, limit: i64) -> GetOptions {
        self.request.limit = limit;
        self
    }

    /// Read history as of `revision`.
    pub fn with_revision(mut self, revision: i64) -> GetOptions {
        self.request.revision = revision;
        self
    }

    pub fn with_serializable(mut self) -> GetOptions {
        self.request.serializable = true;
        self
    }

    pub fn with_keys_only(mut self) -> GetOptions {
        self.request.keys_only = true;
        self
    }

    pub fn with_count_only(mut self) -> GetOptions {
        self.request.count_only = true;
        self
    }

    /// The request these options make for `key`.
    pub fn into_request(mut self, key: impl Into<Vec<u8>>) -> RangeRequest {
        self.request.key = key.into();
        self.request.range_end = self.span.range_end(
            &self.request.key,
            std::mem::take(&mut self.request.range_end),
        );
        self.request
    }
}

/// Options of a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    request: PutRequest,
}

impl PutOptions {
    pub fn new() -> PutOptions {
        PutOptions::default()
    }

    pub fn with_lease(mut self, lease: i64) -> PutOptions {
        self.request.lease = lease;
        self
    }

    pub fn with_prev_kv(mut self) -> PutOptions {
        self.request.prev_kv = true;
        self
    }

    pub fn with_ignore_value(mut self) -> PutOptions {
        self.request.ignore_value = true;
        self
    }

    pub fn with_ignore_lease(mut self) -> PutOptions {
        self.request.ignore_lease = true;
        self
    }

    pub fn into_request(
        mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> PutRequest {
        self.request.key = key.into();
        self.request.value = value.into();
        self.request
    }
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    request: DeleteRangeRequest,
    span: Span,
}

impl DeleteOptions {
    pub fn new() -> DeleteOptions {
        DeleteOptions::default()
    }

    pub fn with_prefix(mut self) -> DeleteOptions {
        self.span = Span::Prefix;
        self
    }

    pub fn with_from_key(mut self) -> DeleteOptions {
        self.span = Span::FromKey;
        self
    }

    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> DeleteOptions {
        self.request.range_end = end.into();
        self
    }

    pub fn with_prev_kv(mut self) -> DeleteOptions {
        self.request.prev_kv = true;
        self
    }

    pub fn into_request(mut self, key: impl Into<Vec<u8>>) -> DeleteRangeRequest {
        self.request.key = key.into();
        self.request.range_end = self.span.range_end(
            &self.request.key,
            std::mem::take(&mut self.request.range_end),
        );
        self.request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn options_build_etcd_requests() {
        let request = GetOptions::new()
            .with_prefix()
            .with_limit(3)
            .into_request("svc/");
        assert_eq!(
            (
                request.key.as_slice(),
                request.range_end.as_slice(),
                request.limit
            ),
            (&b"svc/"[..], &b"svc0"[..], 3)
        );
        assert_eq!(
            GetOptions::new()
                .with_from_key()
                .into_request("a")
                .range_end,
            b"\0"
        );
        assert!(
            PutOptions::new()
                .with_prev_kv()
                .into_request("k", "v")
                .prev_kv
        );
        assert_eq!(
            DeleteOptions::new()
                .with_prefix()
                .into_request("a")
                .range_end,
            b"b"
        );
    }
}
