//! `GET /metrics`: Prometheus exposition built with prometheus-client (never by hand).
//!
//! Request-path figures (requests, durations, wakes, proxy errors) are typed families updated
//! by the front door; per-instance figures (states, restarts, OOM kills, health-check
//! failures, memory, CPU) and log counters are read from the supervisor at scrape time by a
//! collector. Label values are only validated service names and instance ids, status classes
//! and fixed words — never a raw Host header.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tenement::Supervisor;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    service: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
    isolation: String,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Handles to the request figures of each service, kept by each front-door thread so that
/// counting a request neither allocates nor looks up the shared families. (The handles share
/// their values with the families; series appear on first use, as before.)
#[derive(Default)]
pub struct RequestFigures(std::sync::Mutex<std::collections::HashMap<String, ServiceFigures>>);

struct ServiceFigures {
    classes: [Option<Counter>; 5],
    duration: Histogram,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<ServiceLabel, Histogram>,
    pub wake_duration: Family<ServiceLabel, Histogram>,
    pub proxy_errors: Family<KindLabel, Counter>,
    /// Client connections closed at once because a connection cap was reached.
    pub connections_refused: Counter,
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms to ~30 s
    Histogram::new(exponential_buckets(0.0005, 2.5, 13))
}

impl Metrics {
    pub fn new(supervisor: Supervisor, tls: Option<Arc<tenement_tls::Tls>>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tenement");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<ServiceLabel, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let wake_duration = Family::<ServiceLabel, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let proxy_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests through the front door, by service and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head of proxied requests",
            request_duration.clone(),
        );
        registry.register(
            "wake_duration_seconds",
            "Time requests waited for a sleeping or starting instance",
            wake_duration.clone(),
        );
        registry.register(
            "proxy_errors",
            "Proxy failures by kind",
            proxy_errors.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections closed at once: max_connections or max_connections_per_ip reached",
            connections_refused.clone(),
        );
        registry.register_collector(Box::new(Instances(supervisor)));
        if let Some(tls) = tls {
            registry.register_collector(Box::new(Certificates(tls)));
        }
        Arc::new(Metrics {
            registry,
            requests,
            request_duration,
            wake_duration,
            proxy_errors,
            connections_refused,
        })
    }

    /// Counts one front-door request; `figures` is the calling thread's cache of handles.
    pub fn record_request(
        &self,
        figures: &RequestFigures,
        service: &str,
        status: u16,
        took: Duration,
    ) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let mut cache = figures.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match cache.get_mut(service) {
            Some(entry) => entry,
            None => cache
                .entry(service.to_owned())
                .or_insert_with(|| ServiceFigures {
                    classes: Default::default(),
                    duration: self
                        .request_duration
                        .get_or_create(&ServiceLabel {
                            service: service.to_owned(),
                        })
                        .clone(),
                }),
        };
        entry.classes[class]
            .get_or_insert_with(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        service: service.to_owned(),
                        class: CLASSES[class],
                    })
                    .clone()
            })
            .inc();
        entry.duration.observe(took.as_secs_f64());
    }

    /// OpenMetrics text, as prometheus-client writes it.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format (0.0.4), which `promtool check metrics` and older
    /// scrapers read.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render_openmetrics())
    }
}

/// OpenMetrics → Prometheus text 0.0.4: counter families are named with their `_total` suffix
/// in `# HELP`/`# TYPE`, `# UNIT` and `# EOF` go.
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Reads one per-instance counter from a status.
type Reader = fn(&tenement::InstanceStatus) -> Option<u64>;

/// Per-instance figures, read at scrape time.
struct Instances(Supervisor);

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instances")
    }
}

/// The certificates' expiry dates, and the week's issuance count.
struct Certificates(Arc<tenement_tls::Tls>);

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certificates")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

impl Collector for Certificates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor(
            "tls_certificate_expiry_timestamp_seconds",
            "When each certificate expires (seconds since the Unix epoch), by its first name",
            None,
            g.metric_type(),
        )?;
        for cert in self.0.certificates() {
            let name = cert.names.first().cloned().unwrap_or_default();
            ConstGauge::new(cert.not_after as i64).encode(e.encode_family(&NameLabel { name })?)?;
        }
        let (used, _) = self.0.budget();
        let e = encoder.encode_descriptor(
            "tls_certificates_issued_last_7_days",
            "Certificates ordered in the last 7 days (max_certificates_per_week bounds them)",
            None,
            g.metric_type(),
        )?;
        ConstGauge::new(i64::from(used)).encode(e)?;
        Ok(())
    }
}

impl Collector for Instances {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.0.list_cached();
        let mut by_state: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
        for i in &all {
            *by_state.entry((&i.state, &i.isolation)).or_default() += 1;
        }
        let g = ConstGauge::new(0i64);
        let mut e = encoder.encode_descriptor(
            "instances",
            "Instances by state and isolation level",
            None,
            g.metric_type(),
        )?;
        for ((state, isolation), n) in by_state {
            ConstGauge::new(n).encode(e.encode_family(&StateLabels {
                state: state.to_owned(),
                isolation: isolation.to_owned(),
            })?)?;
        }
        let labels = |i: &tenement::InstanceStatus| InstanceLabels {
            service: i.service.clone(),
            instance: i.id.clone(),
        };
        let c = ConstCounter::new(0u64);
        let counters: [(&str, &str, Reader); 3] = [
            ("instance_restarts", "Restarts of each instance", |i| {
                Some(i.restarts as u64)
            }),
            ("instance_oom_kills", "OOM kills of each instance", |i| {
                Some(i.oom_kills as u64)
            }),
            (
                "instance_health_check_failures",
                "Failed health checks of each instance",
                |i| Some(i.health_check_failures),
            ),
        ];
        for (name, help, value) in counters {
            let mut e = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            for i in &all {
                if let Some(v) = value(i) {
                    ConstCounter::new(v).encode(e.encode_family(&labels(i))?)?;
                }
            }
        }
        let mut e = encoder.encode_descriptor(
            "instance_memory_bytes",
            "Current memory of each instance's cgroup",
            None,
            g.metric_type(),
        )?;
        for i in all.iter().filter(|i| i.memory_bytes.is_some()) {
            ConstGauge::new(i.memory_bytes.unwrap_or(0) as i64)
                .encode(e.encode_family(&labels(i))?)?;
        }
        let cs = ConstCounter::new(0f64);
        let mut e = encoder.encode_descriptor(
            "instance_cpu_seconds",
            "CPU time of each instance's current run",
            None,
            cs.metric_type(),
        )?;
        for i in all.iter().filter(|i| i.cpu_usec.is_some()) {
            ConstCounter::new(i.cpu_usec.unwrap_or(0) as f64 / 1e6)
                .encode(e.encode_family(&labels(i))?)?;
        }
        if let Some(store) = self.0.log_store() {
            for (name, help, v) in [
                (
                    "log_lines_written",
                    "Log lines written to the store",
                    store.written(),
                ),
                (
                    "log_lines_dropped",
                    "Log lines dropped under overload",
                    store.dropped(),
                ),
            ] {
                let c = ConstCounter::new(v);
                c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn openmetrics_to_classic_text() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\n# UNIT a_up seconds\na_up 1\n# EOF\n";
        let text = super::openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }
}
