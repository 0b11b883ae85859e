//! How many live sessions each device holds on this node, for `max_connections_per_device`.
//!
//! Devices are counted by a keyed 64-bit hash of their id, not by the id itself: an entry is 12
//! bytes and no id string is kept per connection. The key is random per node, so a client cannot
//! make two device ids share a count; an accidental collision (odds of about n²/2⁶⁴) only makes
//! two devices share one limit. The map is sharded so that a reconnect storm does not line up
//! behind one lock; each lock is held for one map operation, never across an `.await`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::Mutex;

use ringside_sync_util::LockExt;

/// Shards of the count map: enough that upgrades on every core rarely meet on one lock.
const SHARDS: usize = 64;

/// A device, as counted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceKey(u64);

#[derive(Debug)]
pub(crate) struct DeviceSessions {
    hasher: std::collections::hash_map::RandomState,
    /// Live sessions per device; a device with none has no entry.
    shards: Box<[Mutex<HashMap<u64, u32>>]>,
}

impl DeviceSessions {
    pub(crate) fn new() -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        // The map stays consistent even if a holder panicked: every operation is one update.
        let index = (key % SHARDS as u64) as usize;
        self.shards[index].locked()
    }

    /// Counts one more session for `device`, or `None` when it already holds `limit`.
    pub(crate) fn try_acquire(&self, device: &str, limit: u32) -> Option<DeviceKey> {
        let key = self.hasher.hash_one(device);
        let mut shard = self.shard(key);
        if shard.get(&key).is_some_and(|count| *count >= limit) {
            return None;
        }
        *shard.entry(key).or_insert(0) += 1;
        Some(DeviceKey(key))
    }

    /// Counts one session of `device` less.
    pub(crate) fn release(&self, device: DeviceKey) {
        let mut shard = self.shard(device.0);
        if let Entry::Occupied(mut entry) = shard.entry(device.0) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    #[cfg(test)]
    fn devices(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |map| map.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_device_up_to_its_limit_and_forgets_it_when_it_holds_none() {
        let sessions = DeviceSessions::new();
        let first = sessions.try_acquire("tv-1", 2).expect("first");
        let second = sessions.try_acquire("tv-1", 2).expect("second");
        assert_eq!(sessions.try_acquire("tv-1", 2), None);
        assert!(sessions.try_acquire("tv-2", 2).is_some(), "another device");
        sessions.release(first);
        let third = sessions.try_acquire("tv-1", 2).expect("a released place");
        sessions.release(second);
        sessions.release(third);
        assert_eq!(sessions.devices(), 1, "only tv-2 is left");
    }
}
