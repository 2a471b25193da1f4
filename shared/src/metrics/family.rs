//! Metric families and their registration: each metric is created,
//! registered in the process-wide registry and recorded as a [`Family`]
//! (the documented contract) in one call, so the registry and
//! [`families()`](super::families) cannot differ.

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

use super::{registry, PREFIX};

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family as registered: what the contract documents.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Family {
    pub(super) const fn new(
        name: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Family {
        Family {
            name,
            kind,
            labels,
            help,
        }
    }

    /// The series names Prometheus stores for this family.
    pub fn series_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{}{s}", self.name))
                .collect(),
            _ => vec![self.name.to_string()],
        }
    }
}

/// A metric's name.
type Name = &'static str;
/// A metric's help text.
type Text = &'static str;
/// A metric's label names.
type Labels = &'static [&'static str];

/// A method creating a metric without labels: `$ty::new(name, help)`.
macro_rules! plain {
    ($method:ident, $ty:ty, $kind:expr) => {
        pub(super) fn $method(&mut self, name: Name, help: Text) -> $ty {
            self.family(Family::new(name, $kind, &[], help), <$ty>::new(name, help))
        }
    };
}

/// A method creating a labelled counter or gauge.
macro_rules! labelled {
    ($method:ident, $ty:ty, $kind:expr) => {
        pub(super) fn $method(&mut self, name: Name, help: Text, labels: Labels) -> $ty {
            let made = <$ty>::new(Opts::new(name, help), labels);
            self.family(Family::new(name, $kind, labels, help), made)
        }
    };
}

/// Creates and registers metrics, collecting their families in order.
#[derive(Default)]
pub(super) struct Builder {
    pub(super) families: Vec<Family>,
}

impl Builder {
    /// Records the family of `made` and registers it.
    fn family<C: Collector + Clone + 'static>(
        &mut self,
        family: Family,
        made: prometheus::Result<C>,
    ) -> C {
        assert!(
            family.name.starts_with(PREFIX),
            "{} lacks the prefix",
            family.name
        );
        let collector = made.unwrap_or_else(|e| panic!("metric {}: {e}", family.name));
        registry()
            .register(Box::new(collector.clone()))
            .expect("metric names are unique");
        self.families.push(family);
        collector
    }

    plain!(counter, IntCounter, Kind::Counter);
    plain!(int_gauge, IntGauge, Kind::Gauge);
    plain!(gauge, Gauge, Kind::Gauge);
    labelled!(counter_vec, IntCounterVec, Kind::Counter);
    labelled!(gauge_vec, IntGaugeVec, Kind::Gauge);

    pub(super) fn histogram(&mut self, name: Name, help: Text, buckets: &[f64]) -> Histogram {
        let family = Family::new(name, Kind::Histogram, &[], help);
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.family(family, Histogram::with_opts(opts))
    }

    pub(super) fn histogram_vec(
        &mut self,
        name: Name,
        help: Text,
        labels: Labels,
        buckets: &[f64],
    ) -> HistogramVec {
        let family = Family::new(name, Kind::Histogram, labels, help);
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.family(family, HistogramVec::new(opts, labels))
    }
}
