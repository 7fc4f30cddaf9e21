//! The queue and its workers, one step at a time.
//!
//! Messages are whole numbers and FIFO: each step's arrivals form a cohort stamped with the
//! step's start, so the age of a message is known when it is finished (to the step). Within a
//! step `[t, t + step)`:
//!
//! 1. replicas whose startup delay has passed become ready;
//! 2. the step's arrivals join the back of the visible queue;
//! 3. the ready replicas take up to `ready · service_rate · step` messages from the front (the
//!    fraction left over is carried to the next step, so a slow replica still gets through
//!    one message every few steps): these are in flight;
//! 4. the controller looks at the queue (visible + in flight) and may change the replica count;
//! 5. at `t + step` the messages in flight are done and deleted.
//!
//! A new replica becomes ready `startup_delay` after it was asked for. A removed replica stops
//! at once: pods still starting go first (as a ReplicaSet deletes unready pods first), then
//! ready ones, whose share of the messages in flight returns to the front of the queue.

use std::collections::{BTreeMap, VecDeque};

/// Messages that arrived in the same step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cohort {
    arrived_ms: u64,
    count: u64,
}

/// How long finished messages waited, from arrival to deletion, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgeHistogram {
    counts: BTreeMap<u64, u64>,
    total: u64,
}

impl AgeHistogram {
    pub fn add(&mut self, age_ms: u64, count: u64) {
        if count > 0 {
            *self.counts.entry(age_ms).or_insert(0) += count;
            self.total += count;
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Nearest-rank percentile (`fraction` in `0..=1`): the smallest age at least that share of
    /// messages did not exceed.
    pub fn percentile(&self, fraction: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((fraction * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (&age, &count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(age);
            }
        }
        self.max()
    }

    pub fn max(&self) -> Option<u64> {
        self.counts.keys().next_back().copied()
    }
}

/// The queue and the worker pool.
#[derive(Debug, Clone)]
pub struct QueueModel {
    /// Messages per second one ready replica finishes.
    service_rate: f64,
    startup_delay_ms: u64,
    visible: VecDeque<Cohort>,
    visible_count: u64,
    in_flight: VecDeque<Cohort>,
    in_flight_count: u64,
    ready: u32,
    /// When each starting replica becomes ready, earliest first.
    starting: VecDeque<u64>,
    service_credit: f64,
    arrived: u64,
    consumed: u64,
    ages: AgeHistogram,
    step_end_ms: u64,
}

impl QueueModel {
    /// A pool of `initial_replicas` ready replicas and an empty queue.
    pub fn new(service_rate: f64, startup_delay_ms: u64, initial_replicas: u32) -> Self {
        QueueModel {
            service_rate,
            startup_delay_ms,
            visible: VecDeque::new(),
            visible_count: 0,
            in_flight: VecDeque::new(),
            in_flight_count: 0,
            ready: initial_replicas,
            starting: VecDeque::new(),
            service_credit: 0.0,
            arrived: 0,
            consumed: 0,
            ages: AgeHistogram::default(),
            step_end_ms: 0,
        }
    }

    /// Phases 1 to 3 of a step starting at `now_ms`.
    pub fn begin_step(&mut self, now_ms: u64, step_ms: u64, arrivals: u64) {
        self.step_end_ms = now_ms + step_ms;
        while self.starting.front().is_some_and(|&at| at <= now_ms) {
            self.starting.pop_front();
            self.ready += 1;
        }
        if arrivals > 0 {
            self.visible.push_back(Cohort {
                arrived_ms: now_ms,
                count: arrivals,
            });
            self.visible_count += arrivals;
            self.arrived += arrivals;
        }
        let capacity_exact = f64::from(self.ready) * self.service_rate * (step_ms as f64 / 1000.0)
            + self.service_credit;
        let capacity = capacity_exact.floor();
        self.service_credit = capacity_exact - capacity;
        self.receive(capacity as u64);
    }

    /// Moves up to `capacity` messages from the front of the queue into flight.
    fn receive(&mut self, mut capacity: u64) {
        while capacity > 0 {
            let Some(front) = self.visible.front_mut() else {
                break;
            };
            let taken = front.count.min(capacity);
            let arrived_ms = front.arrived_ms;
            front.count -= taken;
            if front.count == 0 {
                self.visible.pop_front();
            }
            capacity -= taken;
            self.visible_count -= taken;
            self.in_flight_count += taken;
            match self.in_flight.back_mut() {
                Some(back) if back.arrived_ms == arrived_ms => back.count += taken,
                _ => self.in_flight.push_back(Cohort {
                    arrived_ms,
                    count: taken,
                }),
            }
        }
    }

    /// Phase 5: the messages in flight are done.
    pub fn end_step(&mut self) {
        for cohort in self.in_flight.drain(..) {
            self.ages.add(
                self.step_end_ms.saturating_sub(cohort.arrived_ms),
                cohort.count,
            );
            self.consumed += cohort.count;
        }
        self.in_flight_count = 0;
    }

    /// Asks for `desired` replicas from `now_ms` on.
    pub fn set_replicas(&mut self, now_ms: u64, desired: u32) {
        let current = self.replicas();
        if desired > current {
            let ready_at = now_ms + self.startup_delay_ms;
            self.starting
                .extend(std::iter::repeat_n(ready_at, (desired - current) as usize));
            return;
        }
        let mut remove = current - desired;
        while remove > 0 && self.starting.pop_back().is_some() {
            remove -= 1;
        }
        if remove == 0 || self.ready == 0 {
            return;
        }
        let remove = remove.min(self.ready);
        let remaining = self.ready - remove;
        // Ready replicas share the messages in flight evenly; the removed ones' part returns.
        let kept = self.in_flight_count * u64::from(remaining) / u64::from(self.ready);
        self.return_in_flight(self.in_flight_count - kept);
        self.ready = remaining;
    }

    /// Puts the `count` youngest in-flight messages back at the front of the visible queue,
    /// which keeps the queue in arrival order.
    fn return_in_flight(&mut self, mut count: u64) {
        while count > 0 {
            let Some(back) = self.in_flight.back_mut() else {
                break;
            };
            let moved = back.count.min(count);
            let arrived_ms = back.arrived_ms;
            back.count -= moved;
            if back.count == 0 {
                self.in_flight.pop_back();
            }
            count -= moved;
            self.in_flight_count -= moved;
            self.visible_count += moved;
            match self.visible.front_mut() {
                Some(front) if front.arrived_ms == arrived_ms => front.count += moved,
                _ => self.visible.push_front(Cohort {
                    arrived_ms,
                    count: moved,
                }),
            }
        }
    }

    /// Replicas asked for: ready plus starting (what the `/scale` subresource says).
    pub fn replicas(&self) -> u32 {
        self.ready + self.starting.len() as u32
    }

    pub fn ready_replicas(&self) -> u32 {
        self.ready
    }

    pub fn visible(&self) -> u64 {
        self.visible_count
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight_count
    }

    /// What an SQS trigger with `include_in_flight = true` reads.
    pub fn depth(&self) -> u64 {
        self.visible_count + self.in_flight_count
    }

    /// Age of the oldest message not yet deleted (in flight ones are the oldest).
    pub fn oldest_age_ms(&self, now_ms: u64) -> u64 {
        self.in_flight
            .front()
            .or(self.visible.front())
            .map_or(0, |c| now_ms.saturating_sub(c.arrived_ms))
    }

    pub fn arrived(&self) -> u64 {
        self.arrived
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    pub fn ages(&self) -> &AgeHistogram {
        &self.ages
    }

    /// Counts the messages still queued at `now_ms` as if they were finished then: a lower
    /// bound of their age, so that a model that never drains is not flattered by leaving its
    /// worst messages out.
    pub fn ages_with_unfinished(&self, now_ms: u64) -> AgeHistogram {
        let mut ages = self.ages.clone();
        for cohort in self.in_flight.iter().chain(&self.visible) {
            ages.add(now_ms.saturating_sub(cohort.arrived_ms), cohort.count);
        }
        ages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_finishes_service_rate_messages_per_second() {
        let mut q = QueueModel::new(2.0, 0, 1);
        q.begin_step(0, 1000, 5);
        assert_eq!((q.visible(), q.in_flight()), (3, 2));
        q.end_step();
        assert_eq!(q.consumed(), 2);
        assert_eq!(q.ages().max(), Some(1000));
    }

    #[test]
    fn fractional_rates_carry_over() {
        let mut q = QueueModel::new(0.5, 0, 1);
        let mut done = Vec::new();
        for k in 0..4 {
            q.begin_step(k * 1000, 1000, if k == 0 { 10 } else { 0 });
            q.end_step();
            done.push(q.consumed());
        }
        assert_eq!(done, vec![0, 1, 1, 2]);
    }

    #[test]
    fn new_replicas_wait_for_the_startup_delay() {
        let mut q = QueueModel::new(1.0, 3000, 0);
        q.set_replicas(0, 2);
        assert_eq!((q.replicas(), q.ready_replicas()), (2, 0));
        q.begin_step(2000, 1000, 0);
        assert_eq!(q.ready_replicas(), 0);
        q.begin_step(3000, 1000, 0);
        assert_eq!(q.ready_replicas(), 2);
    }

    #[test]
    fn removed_replicas_return_their_messages_and_starting_pods_go_first() {
        let mut q = QueueModel::new(5.0, 10_000, 2);
        q.set_replicas(0, 3);
        q.begin_step(0, 1000, 20);
        assert_eq!(q.in_flight(), 10);
        q.set_replicas(0, 1);
        assert_eq!((q.replicas(), q.ready_replicas()), (1, 1));
        assert_eq!((q.visible(), q.in_flight()), (15, 5));
        // The returned messages are older than those that never left the queue.
        assert_eq!(q.oldest_age_ms(500), 500);
        q.end_step();
        assert_eq!(q.consumed() + q.visible(), q.arrived());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut h = AgeHistogram::default();
        h.add(1000, 98);
        h.add(5000, 1);
        h.add(9000, 1);
        assert_eq!(h.percentile(0.5), Some(1000));
        assert_eq!(h.percentile(0.99), Some(5000));
        assert_eq!(h.max(), Some(9000));
        assert_eq!(AgeHistogram::default().percentile(0.5), None);
    }
}
