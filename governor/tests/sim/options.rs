//! What the simulated world may do beyond its random schedule: the clock rates, and the
//! negative controls that switch one safety rule off to show the checker catches its loss.

/// What the world may do beyond the random schedule.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Each member's monotonic clock runs at a rate drawn from this range, in millionths.
    pub clock_rate_ppm: (u64, u64),
    /// The negative control of the bootstrap rule: every bootstrap fails after `initialize`
    /// holds the system identifier and wipes its data anyway.
    pub wipe_after_initialize: bool,
    /// The negative control of the quorum rule: every seed runs in quorum mode and the members
    /// decide as if the `sync` key's voters were each a synchronous standby with every commit.
    pub quorum_blind: bool,
    /// The negative control of the fence: arming it does nothing, so no fence or watchdog
    /// ever stops a primary.
    pub fence_never_armed: bool,
}

impl Default for Options {
    /// Clocks within 5 % of real time: two members' clocks then differ by less than the
    /// 12.5 % the fence margin absorbs (0.5 s of 4 s), against etcd and against each other.
    fn default() -> Self {
        Options {
            clock_rate_ppm: (950_000, 1_050_000),
            wipe_after_initialize: false,
            quorum_blind: false,
            fence_never_armed: false,
        }
    }
}
