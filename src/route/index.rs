//! Names to routes for tables of millions: open addressing (linear probing) over `u32` slots,
//! the names themselves kept once, in the table's text. A slot holds a route number in its low
//! bits and, in the bits the numbers leave free, a tag from the name's hash (11 bits at a million
//! routes): a probe passes over another name's slot without reading that name 2,047 times in
//! 2,048, so a lookup reads one slot's line, then its route and name. A slot costs 4
//! bytes and an index is at most two-thirds full for the keys it was made for, so an index costs
//! 6 to 12 bytes per name. Lookup hashes the name once (SipHash with a per-table key: the names
//! probed come from clients) and allocates nothing.

use std::hash::{BuildHasher, RandomState};

/// An empty slot.
const EMPTY: u32 = u32::MAX;

/// Keys (byte strings, held by the caller) to `u32` values, insert-only.
#[derive(Debug)]
pub(super) struct Index {
    /// Each a value (low bits, [`Index::values`]) and its key's tag (the other bits); or
    /// [`EMPTY`], which no value and tag make.
    slots: Box<[u32]>,
    /// Slots in use.
    len: usize,
    /// The bits of a slot that hold its value.
    values: u32,
    hasher: RandomState,
}

impl Index {
    /// An index with room for `keys` keys, whose values are below `values`.
    pub fn with_capacity(keys: usize, values: usize) -> Self {
        let slots = Self::slots_for(keys);
        // Enough bits for `values` itself: a value's bits are never all ones, so neither is a slot.
        let bits = (values + 1).next_power_of_two().trailing_zeros();
        assert!(bits <= 32, "an index holds u32 values");
        Self {
            slots: vec![EMPTY; slots].into_boxed_slice(),
            len: 0,
            values: ((1u64 << bits) - 1) as u32,
            hasher: RandomState::new(),
        }
    }

    /// The most keys an index made for `keys` takes ([`Index::has_room`]).
    pub fn room(keys: usize) -> usize {
        Self::slots_for(keys) / 4 * 3
    }

    fn slots_for(keys: usize) -> usize {
        match keys {
            0 => 0,
            _ => (keys + keys / 2).next_power_of_two().max(8),
        }
    }

    /// The value of `key`, where `key_of` gives each value's key.
    pub fn get<'k>(&self, key: &[u8], key_of: impl Fn(u32) -> &'k [u8]) -> Option<u32> {
        self.slot(key, &key_of)
            .map(|at| self.slots[at] & self.values)
    }

    /// Enters `value` under `key`; if `key` is there already, leaves it and returns its value.
    /// Only where [`Index::has_room`] says so.
    pub fn insert<'k>(
        &mut self,
        key: &[u8],
        value: u32,
        key_of: impl Fn(u32) -> &'k [u8],
    ) -> Option<u32> {
        debug_assert!(value & !self.values == 0, "a value past the index's bound");
        let (mut at, tag) = self.start(key);
        let mask = self.slots.len() - 1;
        loop {
            match self.slots[at] {
                EMPTY => {
                    self.slots[at] = tag | value;
                    self.len += 1;
                    return None;
                }
                slot if self.holds(slot, tag, key, &key_of) => return Some(slot & self.values),
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Whether `more` keys fit with the index at most three-quarters full (an index is made
    /// two-thirds full at most: a table built anew has room for what the config gave it).
    pub fn has_room(&self, more: usize) -> bool {
        (self.len + more) * 4 <= self.slots.len() * 3
    }

    /// The slot holding `key`.
    fn slot<'k>(&self, key: &[u8], key_of: &impl Fn(u32) -> &'k [u8]) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let (mut at, tag) = self.start(key);
        let mask = self.slots.len() - 1;
        loop {
            match self.slots[at] {
                EMPTY => return None,
                slot if self.holds(slot, tag, key, key_of) => return Some(at),
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Whether a full slot holds `key`, whose tag is `tag`: only a slot with that tag has its
    /// key read.
    fn holds<'k>(
        &self,
        slot: u32,
        tag: u32,
        key: &[u8],
        key_of: &impl Fn(u32) -> &'k [u8],
    ) -> bool {
        slot & !self.values == tag && key_of(slot & self.values) == key
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.slots.len() * size_of::<u32>()
    }

    /// Where a probe for `key` starts (from the hash's low bits) and the tag of `key` (from its
    /// high bits, in the bits above the values).
    fn start(&self, key: &[u8]) -> (usize, u32) {
        let hash = self.hasher.hash_one(key);
        // Truncated on 32-bit targets: the mask keeps fewer bits than that anyway.
        let at = hash as usize & self.slots.len().wrapping_sub(1);
        (at, (hash >> 32) as u32 & !self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::Index;

    #[test]
    fn finds_what_was_entered_and_keeps_the_first() {
        let keys: Vec<String> = (0..1000).map(|i| format!("t{i}.test")).collect();
        let key_of = |value: u32| keys[value as usize].as_bytes();
        // Tags of 22 bits, and of none: every probe then reads its key.
        for values in [keys.len(), u32::MAX as usize - 1] {
            let mut index = Index::with_capacity(keys.len(), values);
            for value in 0..keys.len() as u32 {
                assert_eq!(index.insert(key_of(value), value, key_of), None);
            }
            assert_eq!(index.insert(b"t7.test", 999, key_of), Some(7));
            for value in 0..keys.len() as u32 {
                assert_eq!(index.get(key_of(value), key_of), Some(value));
            }
            assert_eq!(index.get(b"t1000.test", key_of), None);
        }
        assert_eq!(Index::with_capacity(0, 0).get(b"a", key_of), None);
    }
}
