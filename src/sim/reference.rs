//! A reference model of KEDA + the HPA, from their documented behaviour, to compare against.
//!
//! KEDA owns the step between 0 and 1: every `polling_interval` it asks the scaler whether the
//! queue is active (a value above the activation threshold); active at zero replicas means
//! scale to one (or `min_replicas`), and inactive for longer than `cooldown_period` since the
//! last active poll means scale to zero. Between 1 and `max_replicas` the HPA that KEDA
//! generates decides, every `sync_period`, from the external metric with an `AverageValue`
//! target:
//!
//! * proposal `ceil(value / target)`, unless `|value / (target · current) - 1| <= tolerance`;
//!   several triggers give several metrics and the HPA takes the largest proposal;
//! * stabilization: the highest proposal of the last `scale_down_window` caps a scale-down,
//!   the lowest of the last `scale_up_window` caps a scale-up;
//! * rate limits counted from the replicas at the start of each period (the HPA's own changes
//!   only): up by `max(scale_up_pods, scale_up_percent %)`, down by `scale_down_percent %`;
//! * at zero replicas the HPA does nothing ("ScalingDisabled").
//!
//! The defaults are the documented ones: KEDA `pollingInterval` 30 s and `cooldownPeriod`
//! 300 s; HPA sync 15 s, tolerance 0.1, scale-up `max(4 pods, 100 %)` per 15 s without window,
//! scale-down 100 % per 15 s after a 300 s window. The two controllers are not aligned in a
//! cluster; the HPA's syncs are offset by `sync_offset` (7 s, near the average lag of 7.5 s).

use super::driver::Controller;

/// Parameters of the reference model.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceParams {
    pub polling_interval_ms: u64,
    pub cooldown_period_ms: u64,
    pub sync_period_ms: u64,
    pub sync_offset_ms: u64,
    pub tolerance: f64,
    pub scale_up_pods: u32,
    pub scale_up_percent: u32,
    pub scale_up_period_ms: u64,
    pub scale_up_window_ms: u64,
    pub scale_down_percent: u32,
    pub scale_down_period_ms: u64,
    pub scale_down_window_ms: u64,
}

impl Default for ReferenceParams {
    fn default() -> Self {
        ReferenceParams {
            polling_interval_ms: 30_000,
            cooldown_period_ms: 300_000,
            sync_period_ms: 15_000,
            sync_offset_ms: 7_000,
            tolerance: 0.1,
            scale_up_pods: 4,
            scale_up_percent: 100,
            scale_up_period_ms: 15_000,
            scale_up_window_ms: 0,
            scale_down_percent: 100,
            scale_down_period_ms: 15_000,
            scale_down_window_ms: 300_000,
        }
    }
}

/// One trigger as KEDA sees it: `queueLength` (the HPA target) and
/// `activationQueueLength`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    pub target: f64,
    pub activation: f64,
}

/// What the reference model did at one controller run, for tests and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Keda,
    Hpa,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceRecord {
    pub at_ms: u64,
    pub actor: Actor,
    pub value: f64,
    pub current_replicas: u32,
    pub desired_replicas: u32,
}

/// KEDA's scale loop and the HPA controller for one ScaledObject.
#[derive(Debug, Clone)]
pub struct KedaHpa {
    params: ReferenceParams,
    metrics: Vec<Metric>,
    min_replicas: u32,
    max_replicas: u32,
    last_active_ms: Option<u64>,
    next_poll_ms: u64,
    next_sync_ms: u64,
    /// `(at, proposal)` of the HPA's recent syncs, for stabilization.
    recommendations: Vec<(u64, u32)>,
    /// `(at, replicas added)` and `(at, replicas removed)` by the HPA.
    scale_up_events: Vec<(u64, u32)>,
    scale_down_events: Vec<(u64, u32)>,
    pub records: Vec<ReferenceRecord>,
}

impl KedaHpa {
    pub fn new(
        params: ReferenceParams,
        metrics: Vec<Metric>,
        min_replicas: u32,
        max_replicas: u32,
    ) -> Self {
        let next_sync_ms = params.sync_offset_ms;
        KedaHpa {
            params,
            metrics,
            min_replicas,
            max_replicas,
            last_active_ms: None,
            next_poll_ms: 0,
            next_sync_ms,
            recommendations: Vec::new(),
            scale_up_events: Vec::new(),
            scale_down_events: Vec::new(),
            records: Vec::new(),
        }
    }

    /// The HPA's `minReplicas`: KEDA sets it to `max(minReplicaCount, 1)`.
    fn hpa_min(&self) -> u32 {
        self.min_replicas.max(1)
    }

    /// KEDA's poll: only ever moves between zero and one.
    pub fn keda_poll(&mut self, now_ms: u64, value: f64, current: u32) -> u32 {
        let active = self.metrics.iter().any(|m| value > m.activation);
        if active {
            self.last_active_ms = Some(now_ms);
            if current == 0 {
                return self.hpa_min();
            }
        } else if current < self.min_replicas {
            // Below `minReplicaCount` the HPA is disabled (at zero) or not asked; KEDA itself
            // restores the minimum.
            return self.min_replicas;
        } else if current > 0 && self.min_replicas == 0 {
            // KEDA compares `lastActiveTime + cooldownPeriod` strictly before now; without any
            // active poll yet it scales to zero at once (initialCooldownPeriod 0).
            let cooled = self
                .last_active_ms
                .is_none_or(|at| at + self.params.cooldown_period_ms < now_ms);
            if cooled {
                return 0;
            }
        }
        current
    }

    /// One HPA sync (`reconcileAutoscaler` with a `behavior`).
    pub fn hpa_sync(&mut self, now_ms: u64, value: f64, current: u32) -> u32 {
        if current == 0 {
            return 0;
        }
        let desired = if current > self.max_replicas {
            self.max_replicas
        } else if current < self.hpa_min() {
            self.hpa_min()
        } else {
            let proposal = self
                .metrics
                .iter()
                .map(|m| self.proposal(m, value, current))
                .max()
                .unwrap_or(current);
            let stabilized = self.stabilize(now_ms, current, proposal);
            self.rate_limit(now_ms, current, stabilized)
        };
        if desired > current {
            self.scale_up_events.push((now_ms, desired - current));
        } else if desired < current {
            self.scale_down_events.push((now_ms, current - desired));
        }
        desired
    }

    /// `GetExternalPerPodMetricReplicas`: the tolerance is checked on the usage ratio.
    fn proposal(&self, metric: &Metric, value: f64, current: u32) -> u32 {
        let ratio = value / (metric.target * f64::from(current));
        if (1.0 - ratio).abs() > self.params.tolerance {
            let replicas = (value / metric.target).ceil();
            if replicas >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                replicas as u32
            }
        } else {
            current
        }
    }

    /// `stabilizeRecommendationWithBehaviors`: a recommendation counts while it is strictly
    /// younger than the window.
    fn stabilize(&mut self, now_ms: u64, current: u32, proposal: u32) -> u32 {
        let in_window = |at: u64, window: u64| at + window > now_ms;
        let (mut up, mut down) = (proposal, proposal);
        for &(at, replicas) in &self.recommendations {
            if in_window(at, self.params.scale_up_window_ms) {
                up = up.min(replicas);
            }
            if in_window(at, self.params.scale_down_window_ms) {
                down = down.max(replicas);
            }
        }
        let longest = self
            .params
            .scale_up_window_ms
            .max(self.params.scale_down_window_ms);
        self.recommendations
            .retain(|&(at, _)| in_window(at, longest));
        self.recommendations.push((now_ms, proposal));
        current.max(up).min(down)
    }

    /// `convertDesiredReplicasWithBehaviorRate`, then the min/max bounds.
    fn rate_limit(&mut self, now_ms: u64, current: u32, desired: u32) -> u32 {
        let p = &self.params;
        if desired > current {
            let start = self.period_start(now_ms, current, p.scale_up_period_ms);
            let by_pods = start + i64::from(p.scale_up_pods);
            let by_percent =
                (start as f64 * (1.0 + f64::from(p.scale_up_percent) / 100.0)).ceil() as i64;
            let limit = by_pods.max(by_percent).max(i64::from(current));
            let allowed = limit.min(i64::from(self.max_replicas));
            desired.min(to_u32(allowed))
        } else if desired < current {
            let start = self.period_start(now_ms, current, p.scale_down_period_ms);
            let shrunk = f64::from(p.scale_down_percent.min(100)) / 100.0;
            let limit = ((start as f64 * (1.0 - shrunk)) as i64).min(i64::from(current));
            let allowed = limit.max(i64::from(self.hpa_min()));
            desired.max(to_u32(allowed))
        } else {
            desired
        }
    }

    /// Replicas at the start of the period: current minus what the HPA added, plus what it
    /// removed, strictly within the period.
    fn period_start(&self, now_ms: u64, current: u32, period_ms: u64) -> i64 {
        let within = |events: &[(u64, u32)]| -> i64 {
            events
                .iter()
                .filter(|&&(at, _)| at + period_ms > now_ms)
                .map(|&(_, n)| i64::from(n))
                .sum()
        };
        i64::from(current) - within(&self.scale_up_events) + within(&self.scale_down_events)
    }

    fn forget_old_events(&mut self, now_ms: u64) {
        let keep = self
            .params
            .scale_up_period_ms
            .max(self.params.scale_down_period_ms);
        self.scale_up_events.retain(|&(at, _)| at + keep > now_ms);
        self.scale_down_events.retain(|&(at, _)| at + keep > now_ms);
    }
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

impl Controller for KedaHpa {
    fn control(&mut self, now_ms: u64, value: f64, current_replicas: u32) -> u32 {
        let mut current = current_replicas;
        if now_ms >= self.next_sync_ms {
            while self.next_sync_ms <= now_ms {
                self.next_sync_ms += self.params.sync_period_ms.max(1);
            }
            self.forget_old_events(now_ms);
            let desired = self.hpa_sync(now_ms, value, current);
            self.records.push(ReferenceRecord {
                at_ms: now_ms,
                actor: Actor::Hpa,
                value,
                current_replicas: current,
                desired_replicas: desired,
            });
            current = desired;
        }
        if now_ms >= self.next_poll_ms {
            while self.next_poll_ms <= now_ms {
                self.next_poll_ms += self.params.polling_interval_ms.max(1);
            }
            let desired = self.keda_poll(now_ms, value, current);
            self.records.push(ReferenceRecord {
                at_ms: now_ms,
                actor: Actor::Keda,
                value,
                current_replicas: current,
                desired_replicas: desired,
            });
            current = desired;
        }
        current
    }
}
