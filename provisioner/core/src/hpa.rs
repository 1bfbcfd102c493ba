//! The HorizontalPodAutoscaler algorithm (`autoscaling/v2`), as the Kubernetes controller runs it: replica
//! calculation with tolerance and conservative handling of not-ready pods, then stabilisation windows and
//! behavior rate policies (or the legacy limits when `behavior` is absent), then min/max.
//!
//! Pure: the caller supplies the time (milliseconds on any monotonic clock), the current replica count and
//! the metric sample, and keeps the [`HpaState`] between syncs (every 15 s in Kubernetes). One resource
//! metric with an `Utilization` target is modelled (the simulator's load turns into CPU utilisation).

use std::collections::VecDeque;

/// Milliseconds on the caller's clock.
pub type Millis = u64;

/// The default tolerance around ratio 1.0 within which nothing changes.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// The legacy (no `behavior`) downscale stabilisation window.
pub const LEGACY_DOWNSCALE_WINDOW_MS: Millis = 300_000;

/// A rate policy: at most `value` pods, or `value` percent, per `period_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Pods { value: i32, period_seconds: u32 },
    Percent { value: i32, period_seconds: u32 },
}

impl Policy {
    fn period_ms(&self) -> Millis {
        match self {
            Policy::Pods { period_seconds, .. } | Policy::Percent { period_seconds, .. } => {
                Millis::from(*period_seconds) * 1000
            }
        }
    }
}

/// Which policy wins when several apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the largest change (the default).
    #[default]
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// `behavior.scaleUp` or `behavior.scaleDown`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingRules {
    pub stabilization_window_seconds: u32,
    pub select_policy: SelectPolicy,
    pub policies: Vec<Policy>,
    /// Per-direction tolerance (KEP-4951); the global tolerance when `None`.
    pub tolerance: Option<f64>,
}

impl ScalingRules {
    /// Kubernetes' defaults for scale-up: no window; 100 % or 4 pods per 15 s, whichever is more.
    pub fn default_scale_up() -> Self {
        ScalingRules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                Policy::Percent { value: 100, period_seconds: 15 },
                Policy::Pods { value: 4, period_seconds: 15 },
            ],
            tolerance: None,
        }
    }

    /// Kubernetes' defaults for scale-down: a 300 s window; 100 % per 15 s.
    pub fn default_scale_down() -> Self {
        ScalingRules {
            stabilization_window_seconds: 300,
            select_policy: SelectPolicy::Max,
            policies: vec![Policy::Percent { value: 100, period_seconds: 15 }],
            tolerance: None,
        }
    }
}

/// `spec.behavior`, with Kubernetes' defaults filled in for an omitted direction.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules::default_scale_up(),
            scale_down: ScalingRules::default_scale_down(),
        }
    }
}

/// What the HPA is told to do.
#[derive(Clone, Debug, PartialEq)]
pub struct HpaSpec {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Target average utilisation in percent of requests (80 when the HPA names no metric).
    pub target_utilization: f64,
    /// `None`: the legacy limits (double or +4 up, 5-minute downscale window).
    pub behavior: Option<Behavior>,
}

/// One sync's view of the target's pods.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricSample {
    /// Ready pods with a metric.
    pub ready: i32,
    /// Their average utilisation, percent of requests.
    pub utilization: f64,
    /// Pods not ready yet (pending or starting): set aside, assumed idle when scaling up.
    pub unready: i32,
    /// Ready pods with no metric sample yet: assumed at the target when scaling down, idle when scaling up.
    pub missing: i32,
}

/// Why the replica count is what it is, as in the HPA's `ScalingLimited` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    DesiredWithinRange,
    ScaleUpLimit,
    ScaleDownLimit,
    TooManyReplicas,
    TooFewReplicas,
}

/// One sync's result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The raw recommendation from the metric, before stabilisation and limits.
    pub recommendation: i32,
    /// The replica count to set.
    pub replicas: i32,
    pub reason: Reason,
}

/// What the controller remembers between syncs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HpaState {
    recommendations: VecDeque<(Millis, i32)>,
    scale_up_events: VecDeque<(Millis, i32)>,
    scale_down_events: VecDeque<(Millis, i32)>,
}

/// The replica count the metric asks for (`replica_calculator.go`), before any limit.
pub fn recommend(current: i32, sample: MetricSample, target_utilization: f64, tolerance: (f64, f64)) -> i32 {
    let (tol_up, tol_down) = tolerance;
    if sample.ready <= 0 {
        // No metric at all: keep the count (the controller reports an error and does nothing).
        return current;
    }
    let ratio = sample.utilization / target_utilization;
    let within = |r: f64| (r > 1.0 && r - 1.0 <= tol_up) || (r <= 1.0 && 1.0 - r <= tol_down);
    if sample.missing == 0 && (sample.unready == 0 || ratio <= 1.0) {
        // Unready pods only matter for scale-up.
        if within(ratio) {
            return current;
        }
        return (ratio * f64::from(sample.ready)).ceil() as i32;
    }
    // Conservative fill: pods without a metric count at 100 % of the target when scaling down and 0 % when
    // scaling up; on scale-up, unready pods count at 0 % too. Recompute over every pod counted.
    let used = sample.utilization * f64::from(sample.ready);
    let (used, counted) = if ratio < 1.0 {
        (used + target_utilization * f64::from(sample.missing), sample.ready + sample.missing)
    } else {
        (used, sample.ready + sample.missing + sample.unready)
    };
    let new_ratio = used / (target_utilization * f64::from(counted));
    // Within tolerance, or the fill flipped the direction: keep the count.
    if within(new_ratio) || (ratio < 1.0) != (new_ratio < 1.0) {
        return current;
    }
    let desired = (new_ratio * f64::from(counted)).ceil() as i32;
    // Never move against the raw ratio's direction.
    if (ratio > 1.0 && desired < current) || (ratio < 1.0 && desired > current) { current } else { desired }
}

impl HpaSpec {
    fn tolerances(&self) -> (f64, f64) {
        match &self.behavior {
            Some(b) => (
                b.scale_up.tolerance.unwrap_or(DEFAULT_TOLERANCE),
                b.scale_down.tolerance.unwrap_or(DEFAULT_TOLERANCE),
            ),
            None => (DEFAULT_TOLERANCE, DEFAULT_TOLERANCE),
        }
    }

    /// One sync at `now`: the replicas to set given `current` and the metric.
    pub fn sync(&self, state: &mut HpaState, now: Millis, current: i32, sample: MetricSample) -> Decision {
        let recommendation = recommend(current, sample, self.target_utilization, self.tolerances());
        let (replicas, reason) = match &self.behavior {
            None => self.normalize_legacy(state, now, current, recommendation),
            Some(behavior) => self.normalize_with_behavior(behavior, state, now, current, recommendation),
        };
        if replicas > current {
            state.scale_up_events.push_back((now, replicas - current));
        } else if replicas < current {
            state.scale_down_events.push_back((now, current - replicas));
        }
        Decision { recommendation, replicas, reason }
    }

    fn normalize_legacy(&self, state: &mut HpaState, now: Millis, current: i32, rec: i32) -> (i32, Reason) {
        state.recommendations.push_back((now, rec));
        prune(&mut state.recommendations, now, LEGACY_DOWNSCALE_WINDOW_MS);
        let stabilized = state.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(rec);
        let scale_up_limit = (2 * current).max(4);
        let max = self.max_replicas.min(scale_up_limit);
        if stabilized > max {
            let reason =
                if max == self.max_replicas { Reason::TooManyReplicas } else { Reason::ScaleUpLimit };
            (max, reason)
        } else if stabilized < self.min_replicas {
            (self.min_replicas, Reason::TooFewReplicas)
        } else {
            (stabilized, Reason::DesiredWithinRange)
        }
    }

    fn normalize_with_behavior(
        &self,
        behavior: &Behavior,
        state: &mut HpaState,
        now: Millis,
        current: i32,
        rec: i32,
    ) -> (i32, Reason) {
        // Stabilisation: within the up window take the lowest recommendation, within the down window the
        // highest, and move the current count only as far as both allow.
        let up_window = Millis::from(behavior.scale_up.stabilization_window_seconds) * 1000;
        let down_window = Millis::from(behavior.scale_down.stabilization_window_seconds) * 1000;
        state.recommendations.push_back((now, rec));
        prune(&mut state.recommendations, now, up_window.max(down_window));
        let in_window =
            |w: Millis| state.recommendations.iter().filter(move |(t, _)| now.saturating_sub(*t) <= w);
        let up_limit = in_window(up_window).map(|(_, r)| *r).min().unwrap_or(rec);
        let down_limit = in_window(down_window).map(|(_, r)| *r).max().unwrap_or(rec);
        let mut stabilized = current;
        if stabilized < up_limit {
            stabilized = up_limit;
        }
        if stabilized > down_limit {
            stabilized = down_limit;
        }

        let longest = behavior
            .scale_up
            .policies
            .iter()
            .chain(&behavior.scale_down.policies)
            .map(Policy::period_ms)
            .max()
            .unwrap_or(0);
        prune(&mut state.scale_up_events, now, longest);
        prune(&mut state.scale_down_events, now, longest);

        let mut reason = Reason::DesiredWithinRange;
        let mut desired = stabilized;
        if stabilized > current {
            let limit = scale_up_limit(&behavior.scale_up, state, now, current).max(current);
            let mut max_allowed = self.max_replicas;
            if max_allowed > limit {
                max_allowed = limit;
                reason = Reason::ScaleUpLimit;
            } else {
                reason = Reason::TooManyReplicas;
            }
            if desired > max_allowed {
                desired = max_allowed;
            } else {
                reason = Reason::DesiredWithinRange;
            }
        } else if stabilized < current {
            let limit = scale_down_limit(&behavior.scale_down, state, now, current).min(current);
            let mut min_allowed = self.min_replicas;
            if min_allowed < limit {
                min_allowed = limit;
                reason = Reason::ScaleDownLimit;
            } else {
                reason = Reason::TooFewReplicas;
            }
            if desired < min_allowed {
                desired = min_allowed;
            } else {
                reason = Reason::DesiredWithinRange;
            }
        }
        // Out-of-range counts (a manual edit) are clamped too.
        if desired > self.max_replicas {
            (self.max_replicas, Reason::TooManyReplicas)
        } else if desired < self.min_replicas {
            (self.min_replicas, Reason::TooFewReplicas)
        } else {
            (desired, reason)
        }
    }
}

fn prune(events: &mut VecDeque<(Millis, i32)>, now: Millis, window: Millis) {
    while events.front().is_some_and(|(t, _)| now.saturating_sub(*t) > window) {
        events.pop_front();
    }
}

fn changed_within(events: &VecDeque<(Millis, i32)>, now: Millis, period: Millis) -> i32 {
    events.iter().filter(|(t, _)| now.saturating_sub(*t) < period).map(|(_, c)| *c).sum()
}

fn period_start(state: &HpaState, now: Millis, current: i32, period: Millis) -> i32 {
    current - changed_within(&state.scale_up_events, now, period)
        + changed_within(&state.scale_down_events, now, period)
}

fn scale_up_limit(rules: &ScalingRules, state: &HpaState, now: Millis, current: i32) -> i32 {
    if rules.select_policy == SelectPolicy::Disabled || rules.policies.is_empty() {
        return current;
    }
    let proposals = rules.policies.iter().map(|p| {
        let start = period_start(state, now, current, p.period_ms());
        match p {
            Policy::Pods { value, .. } => start + value,
            Policy::Percent { value, .. } => {
                (f64::from(start) * (1.0 + f64::from(*value) / 100.0)).ceil() as i32
            }
        }
    });
    match rules.select_policy {
        SelectPolicy::Min => proposals.min().unwrap_or(current),
        _ => proposals.max().unwrap_or(current),
    }
}

fn scale_down_limit(rules: &ScalingRules, state: &HpaState, now: Millis, current: i32) -> i32 {
    if rules.select_policy == SelectPolicy::Disabled || rules.policies.is_empty() {
        return current;
    }
    let proposals = rules.policies.iter().map(|p| {
        let start = period_start(state, now, current, p.period_ms());
        match p {
            Policy::Pods { value, .. } => start - value,
            Policy::Percent { value, .. } => (f64::from(start) * (1.0 - f64::from(*value) / 100.0)) as i32,
        }
    });
    match rules.select_policy {
        // Max allows the largest change: the lowest count.
        SelectPolicy::Min => proposals.max().unwrap_or(current),
        _ => proposals.min().unwrap_or(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ready: i32, utilization: f64) -> MetricSample {
        MetricSample { ready, utilization, unready: 0, missing: 0 }
    }

    fn legacy(min: i32, max: i32, target: f64) -> HpaSpec {
        HpaSpec { min_replicas: min, max_replicas: max, target_utilization: target, behavior: None }
    }

    #[test]
    fn metric_twice_the_target_doubles_and_half_halves() {
        // The documentation's example: current 200m against a 100m target doubles the replicas; 50m halves them.
        assert_eq!(recommend(4, sample(4, 200.0), 100.0, (0.1, 0.1)), 8);
        assert_eq!(recommend(4, sample(4, 50.0), 100.0, (0.1, 0.1)), 2);
    }

    #[test]
    fn within_tolerance_nothing_changes() {
        assert_eq!(recommend(10, sample(10, 108.0), 100.0, (0.1, 0.1)), 10);
        assert_eq!(recommend(10, sample(10, 91.0), 100.0, (0.1, 0.1)), 10);
        assert_eq!(recommend(10, sample(10, 112.0), 100.0, (0.1, 0.1)), 12);
        // Per-direction tolerance (KEP-4951): 5 % up.
        assert_eq!(recommend(10, sample(10, 108.0), 100.0, (0.05, 0.1)), 11);
    }

    #[test]
    fn unready_pods_count_as_idle_when_scaling_up() {
        // 4 ready at 150 %, 4 starting: 600 / (100 * 8) = 0.75 < 1, so no scale-up on top of the starting pods.
        let s = MetricSample { ready: 4, utilization: 150.0, unready: 4, missing: 0 };
        assert_eq!(recommend(8, s, 100.0, (0.1, 0.1)), 8);
        // 4 ready at 300 %, 2 starting: 1200 / 600 = 2.0 -> 12.
        let s = MetricSample { ready: 4, utilization: 300.0, unready: 2, missing: 0 };
        assert_eq!(recommend(6, s, 100.0, (0.1, 0.1)), 12);
        // Scale-down ignores unready pods: the ratio of the ready ones decides.
        let s = MetricSample { ready: 4, utilization: 50.0, unready: 2, missing: 0 };
        assert_eq!(recommend(6, s, 100.0, (0.1, 0.1)), 2);
    }

    #[test]
    fn pods_without_metrics_are_filled_conservatively() {
        let s = |ready, utilization, missing| MetricSample { ready, utilization, unready: 0, missing };
        // Scale-down: 4 pods at 50 %, 2 without metrics counted at 100 %: (200 + 200) / 600 = 0.67 -> 4.
        assert_eq!(recommend(6, s(4, 50.0, 2), 100.0, (0.1, 0.1)), 4);
        // Scale-up: 4 pods at 200 %, 2 without metrics counted at 0 %: 800 / 600 = 1.33 -> 8.
        assert_eq!(recommend(6, s(4, 200.0, 2), 100.0, (0.1, 0.1)), 8);
        // Scale-up that the fill flips into a scale-down: keep the count.
        assert_eq!(recommend(6, s(2, 120.0, 4), 100.0, (0.1, 0.1)), 6);
        // The fill lands within tolerance: 4 at 80 %, 6 missing at 100 %: (320 + 600) / 1000 = 0.92.
        assert_eq!(recommend(10, s(4, 80.0, 6), 100.0, (0.1, 0.1)), 10);
    }

    #[test]
    fn legacy_path_doubles_at_most_and_keeps_the_highest_recommendation_for_five_minutes() {
        let hpa = legacy(1, 100, 50.0);
        let mut state = HpaState::default();
        // 1 pod at 1000 % wants 20 but may only reach max(2 * 1, 4) = 4.
        let d = hpa.sync(&mut state, 0, 1, sample(1, 1000.0));
        assert_eq!((d.recommendation, d.replicas, d.reason), (20, 4, Reason::ScaleUpLimit));
        // Load drops: the recommendation is 2, but 20 was recommended within 5 minutes... capped by 2 * 4.
        let d = hpa.sync(&mut state, 15_000, 4, sample(4, 25.0));
        assert_eq!((d.recommendation, d.replicas), (2, 8));
        // After the window, the low recommendations win.
        let mut t = 15_000;
        let mut current = 8;
        while t < 1_000_000 {
            t += 15_000;
            current = hpa.sync(&mut state, t, current, sample(current, 6.25)).replicas;
        }
        assert_eq!(current, 1);
    }

    #[test]
    fn documented_scale_down_policies_remove_eight_per_minute_from_eighty() {
        // behavior.scaleDown: Pods 4 / 60 s and Percent 10 / 60 s, selectPolicy Max, no window: from 80
        // replicas the percent policy allows 8, then from 72 it allows 7.2 -> 64 (truncated).
        let behavior = Behavior {
            scale_up: ScalingRules::default_scale_up(),
            scale_down: ScalingRules {
                stabilization_window_seconds: 0,
                select_policy: SelectPolicy::Max,
                policies: vec![
                    Policy::Pods { value: 4, period_seconds: 60 },
                    Policy::Percent { value: 10, period_seconds: 60 },
                ],
                tolerance: None,
            },
        };
        let hpa = HpaSpec {
            min_replicas: 1,
            max_replicas: 100,
            target_utilization: 50.0,
            behavior: Some(behavior),
        };
        let mut state = HpaState::default();
        let d = hpa.sync(&mut state, 0, 80, sample(80, 1.0));
        assert_eq!((d.replicas, d.reason), (72, Reason::ScaleDownLimit));
        // Within the same minute nothing more may go.
        let d = hpa.sync(&mut state, 15_000, 72, sample(72, 1.0));
        assert_eq!(d.replicas, 72);
        let d = hpa.sync(&mut state, 60_000, 72, sample(72, 1.0));
        assert_eq!(d.replicas, 64);
        // Below 40 replicas the Pods policy (4) allows more than 10 %.
        let mut state = HpaState::default();
        let d = hpa.sync(&mut state, 0, 30, sample(30, 1.0));
        assert_eq!(d.replicas, 26);
    }

    #[test]
    fn default_behavior_scales_up_by_the_larger_of_100_percent_and_4_pods_per_15_seconds() {
        let hpa = HpaSpec {
            min_replicas: 1,
            max_replicas: 50,
            target_utilization: 50.0,
            behavior: Some(Behavior::default()),
        };
        let mut state = HpaState::default();
        assert_eq!(hpa.sync(&mut state, 0, 1, sample(1, 2000.0)).replicas, 5, "1 + 4 pods");
        assert_eq!(hpa.sync(&mut state, 15_000, 5, sample(5, 400.0)).replicas, 10, "100 %");
        assert_eq!(hpa.sync(&mut state, 30_000, 10, sample(10, 400.0)).replicas, 20);
        let d = hpa.sync(&mut state, 45_000, 20, sample(20, 400.0));
        assert_eq!((d.replicas, d.reason), (40, Reason::ScaleUpLimit));
        let d = hpa.sync(&mut state, 60_000, 40, sample(40, 400.0));
        assert_eq!((d.replicas, d.reason), (50, Reason::TooManyReplicas));
    }

    #[test]
    fn default_scale_down_window_holds_the_highest_recommendation_for_300_seconds() {
        let hpa = HpaSpec {
            min_replicas: 2,
            max_replicas: 20,
            target_utilization: 50.0,
            behavior: Some(Behavior::default()),
        };
        let mut state = HpaState::default();
        assert_eq!(hpa.sync(&mut state, 0, 10, sample(10, 50.0)).replicas, 10);
        // Load halves: recommendation 5, but 10 was recommended within the window.
        assert_eq!(hpa.sync(&mut state, 15_000, 10, sample(10, 25.0)).replicas, 10);
        assert_eq!(hpa.sync(&mut state, 300_000, 10, sample(10, 25.0)).replicas, 10);
        assert_eq!(hpa.sync(&mut state, 315_001, 10, sample(10, 25.0)).replicas, 5);
        // Never below minReplicas.
        let d = hpa.sync(&mut state, 700_000, 5, sample(5, 1.0));
        assert_eq!((d.replicas, d.reason), (2, Reason::TooFewReplicas));
    }

    #[test]
    fn disabled_direction_never_moves() {
        let behavior = Behavior {
            scale_up: ScalingRules::default_scale_up(),
            scale_down: ScalingRules {
                select_policy: SelectPolicy::Disabled,
                ..ScalingRules::default_scale_down()
            },
        };
        let hpa =
            HpaSpec { min_replicas: 1, max_replicas: 10, target_utilization: 50.0, behavior: Some(behavior) };
        let mut state = HpaState::default();
        assert_eq!(hpa.sync(&mut state, 0, 8, sample(8, 1.0)).replicas, 8);
        assert_eq!(hpa.sync(&mut state, 1_000_000, 8, sample(8, 1.0)).replicas, 8);
    }
}
