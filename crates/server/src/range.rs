//! Range with etcd's semantics on top of an MVCC read view: revision filters, sorting, limit and
//! `more`, keys-only and count-only.

use std::cmp::Ordering;

use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use keel_api::mvccpb::KeyValue;
use keel_storage::mvcc::{RangeEnd, RangeOptions, ReadView};

use crate::ServerError;

/// Serves `request` from `view`. The header carries only the revision; the caller fills in the
/// rest.
pub fn range(view: &impl ReadView, request: &RangeRequest) -> Result<RangeResponse, ServerError> {
    let sort_order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let filtered = request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    // Sorting or filtering needs every key first; otherwise read one more than the limit to
    // learn whether there are more.
    let limit = if sort_order != SortOrder::None || filtered || request.limit <= 0 {
        0
    } else {
        request.limit as usize + 1
    };
    let options = RangeOptions {
        limit,
        revision: request.revision,
        count_only: request.count_only,
    };
    let result = view.range(
        &request.key,
        RangeEnd::from_request(&request.range_end),
        &options,
    )?;
    let mut kvs = result.kvs;

    if request.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= request.max_mod_revision);
    }
    if request.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= request.min_mod_revision);
    }
    if request.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= request.max_create_revision);
    }
    if request.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= request.min_create_revision);
    }

    // The index yields keys in ascending order: sort only when that isn't what was asked.
    let order = match (sort_target, sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, order) => order,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    };
    if order != SortOrder::None {
        let compare = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        // Stable, like the insertion sort etcd's Go sort uses on small inputs.
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| compare(b, a));
        } else {
            kvs.sort_by(compare);
        }
    }

    let mut more = false;
    if request.limit > 0 && kvs.len() > request.limit as usize {
        kvs.truncate(request.limit as usize);
        more = true;
    }
    if request.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: result.revision,
            ..ResponseHeader::default()
        }),
        kvs,
        more,
        count: result.count as i64,
    })
}
