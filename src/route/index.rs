//! Names to routes for tables of millions: open addressing (linear probing) over `u32` route
//! numbers, the names themselves kept once, in the table's text. A slot costs 4 bytes and a new
//! index is at most two-thirds full, so an index costs 6 to 12 bytes per name; a patched one may
//! fill to three-quarters. Lookup hashes the name once (SipHash with a per-table key: the names
//! probed come from clients) and allocates nothing. Removal shifts the entries after it back,
//! so no tombstones pile up.

use std::hash::{BuildHasher, RandomState};

/// An empty slot.
const EMPTY: u32 = u32::MAX;

/// Keys (byte strings, held by the caller) to `u32` values, insert-only.
#[derive(Debug, Clone)]
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

    /// Whether `more` keys fit with the index at most three-quarters full.
    pub fn has_room(&self, more: usize) -> bool {
        (self.len + more) * 4 <= self.slots.len() * 3
    }

    /// Makes `key`'s value `value`, if `key` is there.
    pub fn replace<'k>(&mut self, key: &[u8], value: u32, key_of: impl Fn(u32) -> &'k [u8]) {
        if let Some(at) = self.slot(key, &key_of) {
            self.slots[at] = value;
        }
    }

    /// Takes `key` out, if it is there, moving back the entries probed past it.
    pub fn remove<'k>(&mut self, key: &[u8], key_of: impl Fn(u32) -> &'k [u8]) {
        let Some(mut hole) = self.slot(key, &key_of) else {
            return;
        };
        let mask = self.slots.len() - 1;
        self.slots[hole] = EMPTY;
        self.len -= 1;
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let value = self.slots[at];
            if value == EMPTY {
                return;
            }
            // An entry stays where it is if its home slot lies after the hole, up to it
            // (cyclically); otherwise the hole breaks its probe, and it moves into the hole.
            let home = self.start(key_of(value)) & mask;
            let stays = match hole <= at {
                true => hole < home && home <= at,
                false => hole < home || home <= at,
            };
            if !stays {
                self.slots[hole] = value;
                self.slots[at] = EMPTY;
                hole = at;
            }
        }
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

    /// Removing keys in any order leaves every other one findable (the entries probed past a
    /// removed one move back), in a small index where probes run long and wrap around.
    #[test]
    fn removal_keeps_the_others_findable() {
        let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
        let key_of = |value: u32| keys[value as usize].as_bytes();
        for seed in 0..50u32 {
            let mut index = Index::with_capacity(10);
            assert!(index.has_room(12));
            for value in 0..12 {
                index.insert(key_of(value), value, key_of);
            }
            let mut gone = Vec::new();
            for step in 0..12u32 {
                let value = (step * 7 + seed) % 12;
                if gone.contains(&value) {
                    continue;
                }
                index.remove(key_of(value), key_of);
                gone.push(value);
                for other in 0..12 {
                    let expected = (!gone.contains(&other)).then_some(other);
                    assert_eq!(index.get(key_of(other), key_of), expected, "seed {seed}");
                }
            }
        }
        let mut index = Index::with_capacity(4);
        index.insert(b"k1", 1, key_of);
        index.replace(b"k1", 2, |_| b"k1");
        assert_eq!(index.get(b"k1", |_| b"k1"), Some(2));
    }
}
