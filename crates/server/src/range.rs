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
        // Keys that tie on the target come out in the order Go's unstable `sort.Sort` leaves
        // them in, which is what etcd answers.
        if order == SortOrder::Descend {
            go_sort::sort(&mut kvs, |a, b| compare(b, a).is_lt());
        } else {
            go_sort::sort(&mut kvs, |a, b| compare(a, b).is_lt());
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

/// Go's `sort.Sort` (pattern-defeating quicksort, Go 1.19 and later), step for step.
///
/// etcd sorts ranges with it, and it is not stable: keys that tie on the sort target come out in
/// an order that depends on every comparison and swap the algorithm makes. Matching etcd's
/// answers byte for byte therefore takes the same algorithm, not just any correct sort.
mod go_sort {
    /// Sorts `data` so that `less` holds between no later element and an earlier one.
    pub fn sort<T>(data: &mut [T], less: impl Fn(&T, &T) -> bool) {
        let length = data.len();
        if length <= 1 {
            return;
        }
        let mut sorter = Sorter { data, less };
        sorter.pdqsort(0, length, bit_length(length));
    }

    /// Go's `bits.Len`: the number of bits needed to write `value`.
    fn bit_length(value: usize) -> usize {
        (usize::BITS - value.leading_zeros()) as usize
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Hint {
        Unknown,
        Increasing,
        Decreasing,
    }

    struct Sorter<'a, T, F> {
        data: &'a mut [T],
        less: F,
    }

    impl<T, F: Fn(&T, &T) -> bool> Sorter<'_, T, F> {
        fn less(&self, i: usize, j: usize) -> bool {
            (self.less)(&self.data[i], &self.data[j])
        }

        fn swap(&mut self, i: usize, j: usize) {
            self.data.swap(i, j);
        }

        fn insertion_sort(&mut self, a: usize, b: usize) {
            for i in a + 1..b {
                let mut j = i;
                while j > a && self.less(j, j - 1) {
                    self.swap(j, j - 1);
                    j -= 1;
                }
            }
        }

        fn sift_down(&mut self, lo: usize, hi: usize, first: usize) {
            let mut root = lo;
            loop {
                let mut child = 2 * root + 1;
                if child >= hi {
                    return;
                }
                if child + 1 < hi && self.less(first + child, first + child + 1) {
                    child += 1;
                }
                if !self.less(first + root, first + child) {
                    return;
                }
                self.swap(first + root, first + child);
                root = child;
            }
        }

        fn heap_sort(&mut self, a: usize, b: usize) {
            let first = a;
            let hi = b - a;
            for i in (0..=(hi - 1) / 2).rev() {
                self.sift_down(i, hi, first);
            }
            for i in (0..hi).rev() {
                self.swap(first, first + i);
                self.sift_down(0, i, first);
            }
        }

        fn pdqsort(&mut self, mut a: usize, mut b: usize, mut limit: usize) {
            const MAX_INSERTION: usize = 12;
            let mut was_balanced = true;
            let mut was_partitioned = true;
            loop {
                let length = b - a;
                if length <= MAX_INSERTION {
                    self.insertion_sort(a, b);
                    return;
                }
                if limit == 0 {
                    self.heap_sort(a, b);
                    return;
                }
                if !was_balanced {
                    self.break_patterns(a, b);
                    limit -= 1;
                }
                let (mut pivot, mut hint) = self.choose_pivot(a, b);
                if hint == Hint::Decreasing {
                    self.reverse_range(a, b);
                    pivot = (b - 1) - (pivot - a);
                    hint = Hint::Increasing;
                }
                if was_balanced
                    && was_partitioned
                    && hint == Hint::Increasing
                    && self.partial_insertion_sort(a, b)
                {
                    return;
                }
                if a > 0 && !self.less(a - 1, pivot) {
                    a = self.partition_equal(a, b, pivot);
                    continue;
                }
                let (middle, already_partitioned) = self.partition(a, b, pivot);
                was_partitioned = already_partitioned;
                let (left, right) = (middle - a, b - middle);
                let balance_threshold = length / 8;
                if left < right {
                    was_balanced = left >= balance_threshold;
                    self.pdqsort(a, middle, limit);
                    a = middle + 1;
                } else {
                    was_balanced = right >= balance_threshold;
                    self.pdqsort(middle + 1, b, limit);
                    b = middle;
                }
            }
        }

        /// Moves the elements less than the pivot before it and the rest after it; returns
        /// where the pivot ends up and whether nothing had to move. (Indexes are signed as in
        /// Go, which keeps the loops a literal transcription.)
        fn partition(&mut self, a: usize, b: usize, pivot: usize) -> (usize, bool) {
            self.swap(a, pivot);
            let (mut i, mut j) = (a as isize + 1, b as isize - 1);
            let at = |index: isize| index as usize;
            while i <= j && self.less(at(i), a) {
                i += 1;
            }
            while i <= j && !self.less(at(j), a) {
                j -= 1;
            }
            if i > j {
                self.swap(at(j), a);
                return (at(j), true);
            }
            self.swap(at(i), at(j));
            i += 1;
            j -= 1;
            loop {
                while i <= j && self.less(at(i), a) {
                    i += 1;
                }
                while i <= j && !self.less(at(j), a) {
                    j -= 1;
                }
                if i > j {
                    break;
                }
                self.swap(at(i), at(j));
                i += 1;
                j -= 1;
            }
            self.swap(at(j), a);
            (at(j), false)
        }

        fn partition_equal(&mut self, a: usize, b: usize, pivot: usize) -> usize {
            self.swap(a, pivot);
            let (mut i, mut j) = (a as isize + 1, b as isize - 1);
            let at = |index: isize| index as usize;
            loop {
                while i <= j && !self.less(a, at(i)) {
                    i += 1;
                }
                while i <= j && self.less(a, at(j)) {
                    j -= 1;
                }
                if i > j {
                    break;
                }
                self.swap(at(i), at(j));
                i += 1;
                j -= 1;
            }
            at(i)
        }

        fn partial_insertion_sort(&mut self, a: usize, b: usize) -> bool {
            const MAX_STEPS: usize = 5;
            const SHORTEST_SHIFTING: usize = 50;
            let mut i = a + 1;
            for _ in 0..MAX_STEPS {
                while i < b && !self.less(i, i - 1) {
                    i += 1;
                }
                if i == b {
                    return true;
                }
                if b - a < SHORTEST_SHIFTING {
                    return false;
                }
                self.swap(i, i - 1);
                // Go shifts down to index 1 here, not to `a`.
                if i - a >= 2 {
                    let mut j = i - 1;
                    while j >= 1 {
                        if !self.less(j, j - 1) {
                            break;
                        }
                        self.swap(j, j - 1);
                        j -= 1;
                    }
                }
                if b - i >= 2 {
                    for j in i + 1..b {
                        if !self.less(j, j - 1) {
                            break;
                        }
                        self.swap(j, j - 1);
                    }
                }
            }
            false
        }

        fn break_patterns(&mut self, a: usize, b: usize) {
            let length = b - a;
            if length >= 8 {
                let mut random = length as u64;
                let modulus = 1usize << bit_length(length);
                let middle = a + (length / 4) * 2;
                for index in middle - 1..=middle + 1 {
                    random ^= random << 13;
                    random ^= random >> 17;
                    random ^= random << 5;
                    let mut other = (random as usize) & (modulus - 1);
                    if other >= length {
                        other -= length;
                    }
                    self.swap(index, a + other);
                }
            }
        }

        fn choose_pivot(&mut self, a: usize, b: usize) -> (usize, Hint) {
            const SHORTEST_NINTHER: usize = 50;
            const MAX_SWAPS: usize = 4 * 3;
            let length = b - a;
            let mut swaps = 0;
            let mut i = a + length / 4;
            let mut j = a + length / 4 * 2;
            let mut k = a + length / 4 * 3;
            if length >= 8 {
                if length >= SHORTEST_NINTHER {
                    i = self.median(i - 1, i, i + 1, &mut swaps);
                    j = self.median(j - 1, j, j + 1, &mut swaps);
                    k = self.median(k - 1, k, k + 1, &mut swaps);
                }
                j = self.median(i, j, k, &mut swaps);
            }
            match swaps {
                0 => (j, Hint::Increasing),
                MAX_SWAPS => (j, Hint::Decreasing),
                _ => (j, Hint::Unknown),
            }
        }

        fn order2(&self, a: usize, b: usize, swaps: &mut usize) -> (usize, usize) {
            if self.less(b, a) {
                *swaps += 1;
                (b, a)
            } else {
                (a, b)
            }
        }

        fn median(&self, a: usize, b: usize, c: usize, swaps: &mut usize) -> usize {
            let (a, b) = self.order2(a, b, swaps);
            let (b, _) = self.order2(b, c, swaps);
            let (_, b) = self.order2(a, b, swaps);
            b
        }

        fn reverse_range(&mut self, a: usize, b: usize) {
            let (mut i, mut j) = (a, b - 1);
            while i < j {
                self.swap(i, j);
                i += 1;
                j -= 1;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::sort;

        #[test]
        fn sorts_like_any_correct_sort_apart_from_ties() {
            let mut state = 7_u64;
            for length in [0, 1, 2, 5, 12, 13, 40, 49, 50, 51, 100, 1000] {
                let mut values: Vec<(u64, usize)> = (0..length)
                    .map(|position| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state % 10, position)
                    })
                    .collect();
                let mut expected: Vec<u64> = values.iter().map(|value| value.0).collect();
                expected.sort_unstable();
                sort(&mut values, |a, b| a.0 < b.0);
                let got: Vec<u64> = values.iter().map(|value| value.0).collect();
                assert_eq!(got, expected, "length {length}");
                // Already sorted and reversed inputs take the pattern shortcuts.
                let mut sorted: Vec<usize> = (0..length).collect();
                sort(&mut sorted, |a, b| a < b);
                assert!(sorted.windows(2).all(|pair| pair[0] < pair[1]));
                sort(&mut sorted, |a, b| a > b);
                assert!(sorted.windows(2).all(|pair| pair[0] > pair[1]));
            }
        }
    }
}
