//! What a rule remembers between decisions. It is small, serializable (the agent persists it in
//! a ConfigMap) and only ever replaced whole by [`super::decide`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// A rule's memory of past decisions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Memory {
    pub first_seen_at: Option<Timestamp>,
    pub last_scale_up_at: Option<Timestamp>,
    pub last_scale_down_at: Option<Timestamp>,
    /// The last time some trigger was above its activation threshold.
    pub last_active_at: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub in_fallback: bool,
    /// Recommendations for the scale-down window, oldest first, values strictly decreasing:
    /// an older, smaller recommendation can never be the window's maximum again, so it is
    /// dropped. The front is the maximum. This keeps the memory O(distinct values), not
    /// O(window / poll interval).
    pub down_window: Vec<Recommendation>,
    /// The same for the scale-up window with values strictly increasing; the front is the
    /// minimum.
    pub up_window: Vec<Recommendation>,
    /// Replica changes carried out, for the rate policies.
    pub scale_events: Vec<ScaleEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendation {
    pub at: Timestamp,
    pub replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub at: Timestamp,
    /// Positive for a scale-up, negative for a scale-down.
    pub change: i64,
}

impl Memory {
    /// Adds a recommendation to both windows and returns `(lowest in the up window, highest in
    /// the down window)`, the two bounds HPA-style stabilization works with.
    pub fn stabilize(
        &mut self,
        now: Timestamp,
        replicas: u32,
        up_window: Duration,
        down_window: Duration,
    ) -> (u32, u32) {
        let rec = Recommendation { at: now, replicas };
        push_monotonic(&mut self.down_window, rec, |older, newer| older <= newer);
        push_monotonic(&mut self.up_window, rec, |older, newer| older >= newer);
        expire(&mut self.down_window, now, down_window);
        expire(&mut self.up_window, now, up_window);
        let lowest = self.up_window.first().map_or(replicas, |r| r.replicas);
        let highest = self.down_window.first().map_or(replicas, |r| r.replicas);
        (lowest, highest)
    }

    /// Records a carried-out change and forgets changes older than `keep`.
    pub fn record_change(&mut self, now: Timestamp, from: u32, to: u32, keep: Duration) {
        let change = i64::from(to) - i64::from(from);
        if change > 0 {
            self.last_scale_up_at = Some(now);
        } else if change < 0 {
            self.last_scale_down_at = Some(now);
        }
        if change != 0 {
            self.scale_events.push(ScaleEvent { at: now, change });
        }
        self.scale_events.retain(|e| now.since(e.at) < keep);
    }

    /// Replicas added and removed within `period` before `now`.
    pub fn changes_within(&self, now: Timestamp, period: Duration) -> (u64, u64) {
        self.scale_events
            .iter()
            .filter(|e| now.since(e.at) < period)
            .fold((0, 0), |(added, removed), e| {
                if e.change > 0 {
                    (added + e.change.unsigned_abs(), removed)
                } else {
                    (added, removed + e.change.unsigned_abs())
                }
            })
    }
}

impl Memory {
    /// The memory a restarted agent goes on with, read back from storage at `now`.
    ///
    /// Storage is written on scale events and fallback transitions only (so that a steady
    /// state costs no API requests), so the recommendations and the last activity made between
    /// the last save and the restart are lost. The restart cannot tell a demand that stopped
    /// right after the save from one that lasted until `now`, so it assumes the latter: the
    /// highest recommendation of the scale-down window, and the last activity, are taken as
    /// seen at `now`. A restart can then delay a scale-down by up to one window, but never
    /// bring one forward.
    pub fn resumed(mut self, now: Timestamp) -> Memory {
        if let Some(highest) = self.down_window.first().copied() {
            self.down_window = vec![Recommendation {
                at: highest.at.max(now),
                replicas: highest.replicas,
            }];
        }
        self.last_active_at = self.last_active_at.max(Some(now));
        self
    }
}

/// Pushes `rec`, first dropping newer-side entries that `rec` dominates.
fn push_monotonic(
    window: &mut Vec<Recommendation>,
    rec: Recommendation,
    dominated: impl Fn(u32, u32) -> bool,
) {
    while window
        .last()
        .is_some_and(|last| dominated(last.replicas, rec.replicas))
    {
        window.pop();
    }
    window.push(rec);
}

/// Drops entries older than the window, always keeping the newest.
fn expire(window: &mut Vec<Recommendation>, now: Timestamp, length: Duration) {
    let keep_from = window
        .iter()
        .position(|r| now.since(r.at) <= length)
        .unwrap_or(window.len().saturating_sub(1));
    window.drain(..keep_from);
}

/// The part of a memory worth persisting as soon as it changes: it changes only on scale
/// events, fallback transitions and first sight, so at steady state nothing is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurablePart {
    pub first_seen_at: Option<Timestamp>,
    pub last_scale_up_at: Option<Timestamp>,
    pub last_scale_down_at: Option<Timestamp>,
    pub in_fallback: bool,
}

impl Memory {
    pub fn durable_part(&self) -> DurablePart {
        DurablePart {
            first_seen_at: self.first_seen_at,
            last_scale_up_at: self.last_scale_up_at,
            last_scale_down_at: self.last_scale_down_at,
            in_fallback: self.in_fallback,
        }
    }
}
