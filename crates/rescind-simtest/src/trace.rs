//! The trace hash of a run (I7): every journal record of every saga in id
//! order, the simulator's effect log and its applied scheduled events.

use crate::plan::SagaPlan;
use crate::world::World;
use rescind_core::record::encode;
use rescind_core::Journal;

/// FNV-1a, 64 bits: stable across Rust releases (unlike `DefaultHasher`),
/// so a printed trace hash means the same thing on every machine.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Feed bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that ["ab","c"] and ["a","bc"] differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Hash the run's observable history.
pub async fn trace_hash(world: &World, plans: &[SagaPlan]) -> u64 {
    let mut h = Fnv64::default();
    let mut ids: Vec<_> = plans.iter().map(|p| p.id()).collect();
    ids.sort();
    for id in ids {
        h.write(id.to_string().as_bytes());
        if let Ok(entries) = world.journal.read(id).await {
            for e in &entries {
                h.write(&encode(e));
            }
        }
    }
    for e in world.sim.effects() {
        h.write(format!("{} {} {} {} {}", e.seq, e.op, e.target, e.count, e.at_ms).as_bytes());
    }
    for e in world.sim.event_history() {
        h.write(
            format!(
                "{:?} {} {} {} {}",
                e.event.action, e.event.channel, e.event.order_id, e.at_ms, e.applied
            )
            .as_bytes(),
        );
    }
    h.finish()
}
