//! The provisioning batch window: pods arriving close together are planned together.
//!
//! A batch opens with the first provisionable pod and closes after `idle` without a new one, or `max` after
//! it opened, whichever comes first (Karpenter's 1 s / 10 s defaults). Pure: the caller tells the time.

use crate::hpa::Millis;

/// The batch window settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchWindow {
    pub idle_ms: Millis,
    pub max_ms: Millis,
}

impl Default for BatchWindow {
    fn default() -> Self {
        BatchWindow { idle_ms: 1_000, max_ms: 10_000 }
    }
}

/// An open or closed batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batcher {
    window: BatchWindow,
    opened: Option<Millis>,
    last: Millis,
}

impl Batcher {
    pub fn new(window: BatchWindow) -> Self {
        Batcher { window, opened: None, last: 0 }
    }

    /// A provisionable pod was seen at `now`; returns when the batch will close if nothing else arrives.
    pub fn observe(&mut self, now: Millis) -> Millis {
        let opened = *self.opened.get_or_insert(now);
        self.last = now;
        self.deadline_from(opened)
    }

    fn deadline_from(&self, opened: Millis) -> Millis {
        (self.last + self.window.idle_ms).min(opened + self.window.max_ms)
    }

    /// When the open batch closes (`None` when no batch is open).
    pub fn deadline(&self) -> Option<Millis> {
        self.opened.map(|o| self.deadline_from(o))
    }

    /// Closes the batch if its deadline has passed; true when it closed (time to plan).
    pub fn close_if_due(&mut self, now: Millis) -> bool {
        match self.deadline() {
            Some(deadline) if now >= deadline => {
                self.opened = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_after_idle_or_at_the_maximum() {
        let mut b = Batcher::new(BatchWindow::default());
        assert_eq!(b.deadline(), None);
        assert_eq!(b.observe(0), 1_000);
        assert!(!b.close_if_due(999));
        assert_eq!(b.observe(900), 1_900, "a new pod extends the idle window");
        assert!(b.close_if_due(1_900));
        assert_eq!(b.deadline(), None);
        // A steady trickle every 500 ms is cut at 10 s.
        let mut t = 20_000;
        let mut deadline = b.observe(t);
        while t < 40_000 && !b.close_if_due(t) {
            t += 500;
            deadline = b.observe(t);
        }
        assert_eq!(deadline, 30_000);
    }
}
