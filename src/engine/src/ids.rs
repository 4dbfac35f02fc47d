//! Where the engine's random ids (pool, disk, placement seeds) come from: the OS generator, or,
//! for a deterministic simulation, a seeded stream set for the current thread (a simulation
//! runs one engine on one current-thread runtime, so every task of it sees the same stream).
//!
//! Must never: be seeded outside a simulation or test (ids would repeat across pools).

use std::cell::Cell;

use uuid::Uuid;

thread_local! {
    /// splitmix64 state of this thread's seeded stream.
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Draw this thread's engine ids from a stream seeded with `seed` (None: random again), so a
/// simulation seed replays the engine's choices too (placement, which replica reads first).
pub fn seed_ids_for_this_thread(seed: Option<u64>) {
    SEEDED.with(|s| s.set(seed));
}

/// A new random id, from this thread's seeded stream if there is one.
pub(crate) fn new_uuid() -> Uuid {
    SEEDED.with(|s| match s.get() {
        Some(mut st) => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&splitmix64(&mut st).to_le_bytes());
            bytes[8..].copy_from_slice(&splitmix64(&mut st).to_le_bytes());
            s.set(Some(st));
            uuid::Builder::from_random_bytes(bytes).into_uuid()
        }
        None => Uuid::new_v4(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_and_unseeded_do_not() {
        seed_ids_for_this_thread(Some(7));
        let a = (new_uuid(), new_uuid());
        seed_ids_for_this_thread(Some(7));
        let b = (new_uuid(), new_uuid());
        assert_eq!(a, b);
        assert_ne!(a.0, a.1);
        seed_ids_for_this_thread(None);
        assert_ne!(new_uuid(), new_uuid());
    }
}
