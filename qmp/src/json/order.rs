//! The order in which QEMU walks the members of a JSON object.
//!
//! QEMU keeps objects in a `QDict`: 512 hash buckets (`tdb_hash`), each a list with the newest
//! entry first. Its JSON writer and its checks of a request's members walk the buckets in
//! order, so `{"return": {}, "id": 1}` but `{"id": 1, "error": ...}`. Writing and checking in
//! the same order makes our replies byte-identical to qemu-storage-daemon's and makes us report
//! the same member when a request has several problems.
//!
//! The unknown member of an `arguments` object is found in a second structure, a GLib
//! `GHashTable` of the members not visited yet; [`first_unvisited`] replays that table.

const QDICT_BUCKETS: u32 = 512;

/// QEMU's `tdb_hash` (from gdbm via tdb).
fn tdb_hash(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(b) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
}

/// The QDict bucket of a key.
fn bucket(key: &str) -> u32 {
    tdb_hash(key) % QDICT_BUCKETS
}

/// Sorts keys into QDict iteration order. `keys` is in insertion order; within a bucket the
/// later insertion comes first.
pub(crate) fn qdict_order<'a, I>(keys: I) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut v: Vec<(u32, usize, &str)> = keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| (bucket(k), usize::MAX - i, k))
        .collect();
    v.sort_unstable();
    v.into_iter().map(|(_, _, k)| k).collect()
}

/// GLib's `g_str_hash` (djb2 over *signed* chars).
fn g_str_hash(key: &str) -> u32 {
    let mut h: u32 = 5381;
    for &b in key.as_bytes() {
        h = (h << 5).wrapping_add(h).wrapping_add(b as i8 as u32);
    }
    h
}

const UNUSED: u32 = 0;
const TOMBSTONE: u32 = 1;
const MIN_SHIFT: u32 = 3;
const PRIME_MOD: [u32; 32] = [
    1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
    262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689,
    268435399, 536870909, 1073741789, 2147483647,
];

/// Just enough of GLib's open-addressing `GHashTable` (2.60 and later) to know where each key
/// sits: slot positions decide the iteration order.
struct GHash<'a> {
    hashes: Vec<u32>,
    keys: Vec<Option<&'a str>>,
    modulus: u32,
    mask: u32,
    nnodes: usize,
    noccupied: usize,
}

impl<'a> GHash<'a> {
    fn new() -> Self {
        let mut t = GHash {
            hashes: Vec::new(),
            keys: Vec::new(),
            modulus: 0,
            mask: 0,
            nnodes: 0,
            noccupied: 0,
        };
        t.set_shift(MIN_SHIFT);
        t.hashes = vec![UNUSED; t.size()];
        t.keys = vec![None; t.size()];
        t
    }

    fn size(&self) -> usize {
        self.mask as usize + 1
    }

    fn set_shift(&mut self, shift: u32) {
        self.modulus = PRIME_MOD[shift as usize];
        self.mask = (1u32 << shift) - 1;
    }

    fn hash_to_index(&self, hash: u32) -> usize {
        (hash.wrapping_mul(11) % self.modulus) as usize
    }

    fn hash_of(key: &str) -> u32 {
        let h = g_str_hash(key);
        if h <= TOMBSTONE {
            2
        } else {
            h
        }
    }

    /// The slot holding `key`, or where it would be inserted.
    fn lookup(&self, key: &str, hash: u32) -> usize {
        let mut index = self.hash_to_index(hash);
        let mut first_tombstone = None;
        let mut step = 0;
        loop {
            let h = self.hashes[index];
            if h == UNUSED {
                break;
            }
            if h == hash && self.keys[index] == Some(key) {
                return index;
            }
            if h == TOMBSTONE && first_tombstone.is_none() {
                first_tombstone = Some(index);
            }
            step += 1;
            index = (index + step) & self.mask as usize;
        }
        first_tombstone.unwrap_or(index)
    }

    fn insert(&mut self, key: &'a str) {
        let hash = Self::hash_of(key);
        let index = self.lookup(key, hash);
        let old = self.hashes[index];
        self.hashes[index] = hash;
        self.keys[index] = Some(key);
        if old > TOMBSTONE {
            return; // replaced an existing key
        }
        self.nnodes += 1;
        if old == UNUSED {
            self.noccupied += 1;
            self.maybe_resize();
        }
    }

    fn remove(&mut self, key: &str) {
        let hash = Self::hash_of(key);
        let index = self.lookup(key, hash);
        if self.hashes[index] <= TOMBSTONE {
            return;
        }
        self.hashes[index] = TOMBSTONE;
        self.keys[index] = None;
        self.nnodes -= 1;
        self.maybe_resize();
    }

    fn maybe_resize(&mut self) {
        let size = self.size();
        let occ = self.noccupied;
        if (size > self.nnodes * 4 && size > 1 << MIN_SHIFT) || size <= occ + occ / 16 {
            self.resize();
        }
    }

    fn resize(&mut self) {
        let old_size = self.size();
        let target = (self.nnodes as f64 * 1.333) as u64;
        let shift = (64 - target.leading_zeros()).max(MIN_SHIFT);
        self.set_shift(shift);
        let new_size = self.size();
        let span = old_size.max(new_size);
        self.hashes.resize(span, UNUSED);
        self.keys.resize(span, None);
        let mut relocated = vec![false; span];
        for i in 0..old_size {
            let mut node_hash = self.hashes[i];
            if node_hash <= TOMBSTONE {
                self.hashes[i] = UNUSED;
                continue;
            }
            if relocated[i] {
                continue;
            }
            self.hashes[i] = UNUSED;
            let mut key = self.keys[i].take();
            loop {
                let mut index = self.hash_to_index(node_hash);
                let mut step = 0;
                while relocated[index] {
                    step += 1;
                    index = (index + step) & self.mask as usize;
                }
                relocated[index] = true;
                let replaced_hash = self.hashes[index];
                let replaced_key = self.keys[index].take();
                self.hashes[index] = node_hash;
                self.keys[index] = key;
                if replaced_hash <= TOMBSTONE {
                    break;
                }
                node_hash = replaced_hash;
                key = replaced_key;
            }
        }
        self.hashes.truncate(new_size);
        self.keys.truncate(new_size);
        self.noccupied = self.nnodes;
    }

    fn first(&self) -> Option<&'a str> {
        self.keys.iter().flatten().next().copied()
    }
}

/// The member QEMU's input visitor reports as unexpected: `all` are the object's keys in
/// insertion order, `visited` the keys the command consumed, in the order it consumed them.
/// Returns None when every key was visited.
pub(crate) fn first_unvisited<'a>(all: &[&'a str], visited: &[&str]) -> Option<&'a str> {
    let mut table = GHash::new();
    for key in qdict_order(all.iter().copied()) {
        table.insert(key);
    }
    for key in visited {
        table.remove(key);
    }
    table.first()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qdict_order_matches_qemu_output() {
        // Orders seen in qemu-storage-daemon 10.0.2's replies.
        assert_eq!(
            qdict_order(["major", "minor", "micro"]),
            ["micro", "minor", "major"]
        );
        assert_eq!(qdict_order(["error", "id"]), ["id", "error"]);
        assert_eq!(qdict_order(["return", "id"]), ["return", "id"]);
        assert_eq!(
            qdict_order(["event", "data", "timestamp"]),
            ["timestamp", "event", "data"]
        );
    }

    #[test]
    fn unvisited_matches_glib() {
        // qemu-storage-daemon reports 'b' for {"a":1,"b":2,"c":3} in either order.
        assert_eq!(first_unvisited(&["a", "b", "c"], &[]), Some("b"));
        assert_eq!(first_unvisited(&["c", "b", "a"], &[]), Some("b"));
        assert_eq!(first_unvisited(&["a", "b", "c"], &["b"]), Some("a"));
        assert_eq!(first_unvisited(&["a"], &["a"]), None);
        let many: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(first_unvisited(&keys, &keys[..99]) == Some("k99"));
    }
}
