//! Names to routes for tables of millions: open addressing (linear probing) over `u32` route
//! numbers, the names themselves kept once, in the table's text. A slot costs 4 bytes and an
//! index is at most two-thirds full for the keys it was made for, so an index costs 6 to 12
//! bytes per name. Lookup hashes the name once (SipHash with a per-table key: the names probed
//! come from clients) and allocates nothing.

use std::hash::{BuildHasher, RandomState};

/// An empty slot.
const EMPTY: u32 = u32::MAX;

/// Keys (byte strings, held by the caller) to `u32` values, insert-only.
#[derive(Debug)]
pub(super) struct Index {
    slots: Box<[u32]>,
    /// Slots in use.
    len: usize,
    hasher: RandomState,
}

impl Index {
    /// An index with room for `keys` keys.
    pub fn with_capacity(keys: usize) -> Self {
        let slots = match keys {
            0 => 0,
            _ => (keys + keys / 2).next_power_of_two().max(8),
        };
        Self {
            slots: vec![EMPTY; slots].into_boxed_slice(),
            len: 0,
            hasher: RandomState::new(),
        }
    }

    /// The value of `key`, where `key_of` gives each value's key.
    pub fn get<'k>(&self, key: &[u8], key_of: impl Fn(u32) -> &'k [u8]) -> Option<u32> {
        self.slot(key, &key_of).map(|at| self.slots[at])
    }

    /// Enters `value` under `key`; if `key` is there already, leaves it and returns its value.
    /// Only where [`Index::has_room`] says so.
    pub fn insert<'k>(
        &mut self,
        key: &[u8],
        value: u32,
        key_of: impl Fn(u32) -> &'k [u8],
    ) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut at = self.start(key) & mask;
        loop {
            match self.slots[at] {
                EMPTY => {
                    self.slots[at] = value;
                    self.len += 1;
                    return None;
                }
                existing if key_of(existing) == key => return Some(existing),
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
        let mask = self.slots.len() - 1;
        let mut at = self.start(key) & mask;
        loop {
            match self.slots[at] {
                EMPTY => return None,
                value if key_of(value) == key => return Some(at),
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.slots.len() * size_of::<u32>()
    }

    fn start(&self, key: &[u8]) -> usize {
        // Truncated on 32-bit targets: the mask keeps fewer bits than that anyway.
        self.hasher.hash_one(key) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::Index;

    #[test]
    fn finds_what_was_entered_and_keeps_the_first() {
        let keys: Vec<String> = (0..1000).map(|i| format!("t{i}.test")).collect();
        let key_of = |value: u32| keys[value as usize].as_bytes();
        let mut index = Index::with_capacity(keys.len());
        for value in 0..keys.len() as u32 {
            assert_eq!(index.insert(key_of(value), value, key_of), None);
        }
        assert_eq!(index.insert(b"t7.test", 999, key_of), Some(7));
        for value in 0..keys.len() as u32 {
            assert_eq!(index.get(key_of(value), key_of), Some(value));
        }
        assert_eq!(index.get(b"t1000.test", key_of), None);
        assert_eq!(Index::with_capacity(0).get(b"a", key_of), None);
    }
}
