//! Prometheus metrics through `prometheus-client` (typed families, label escaping, the text
//! exposition format). Every name starts with `pointsman_`.
//!
//! Counters that the server drives live in one [`Registry`]; values read from the engine when
//! `/metrics` is scraped (queue length, cache counters) are encoded from a registry made for
//! that scrape, so that they are never stale.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The metric name prefix.
pub const PREFIX: &str = "pointsman";

/// A latency histogram in seconds.
#[derive(Debug, Clone)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(prometheus_client::metrics::histogram::Histogram::new(
            LATENCY_BUCKETS_S,
        ))
    }
}

impl Histogram {
    /// Records one observation in seconds.
    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

/// Values read from the engine when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Prompts waiting for a worker.
    pub queue_len: usize,
    /// Vectors in the live index.
    pub index_vectors: usize,
    /// Embedding-cache hits so far.
    pub cache_hits: u64,
    /// Embedding-cache misses so far.
    pub cache_misses: u64,
    /// Embedding-cache entries now.
    pub cache_entries: usize,
}

/// An HTTP request being handled: see [`Metrics::in_flight`].
#[derive(Debug)]
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    route: String,
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    model: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Why the server closed a connection that was holding it (`pointsman_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A request head did not arrive within the header read timeout.
    HeaderTimeout,
    /// A kept-alive connection stayed idle beyond the idle timeout.
    IdleTimeout,
    /// A request body stopped arriving for the body read timeout (answered 408).
    BodyTimeout,
}

impl Closed {
    const ALL: [Closed; 3] = [
        Closed::HeaderTimeout,
        Closed::IdleTimeout,
        Closed::BodyTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::BodyTimeout => "body_timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type UsdCounter = Counter<f64, AtomicU64>;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    spend: Family<ModelLabel, UsdCounter>,
    /// What the most expensive catalog model would have cost for the routed requests.
    premium_spend_usd: AtomicU64,
    /// Estimated spend, summed over models (kept beside the family for the savings).
    routed_spend_usd: AtomicU64,
    usage: Family<ModelLabel, UsdCounter>,
    upstream: Family<UpstreamLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    fallbacks: Counter,
    truncated: Counter,
    overloaded: Counter,
    rate_limited: Counter,
    in_flight: Gauge,
    connections_open: Gauge,
    connections_refused: Counter,
    connections_closed: Family<ReasonLabel, Counter>,
    /// End-to-end latency of route requests.
    pub request_latency: Histogram,
    /// Time spent embedding (per prompt, shared batch time).
    pub embed_latency: Histogram,
    /// Time spent waiting in the queue.
    pub queue_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            decisions: Family::default(),
            spend: Family::default(),
            premium_spend_usd: AtomicU64::new(0f64.to_bits()),
            routed_spend_usd: AtomicU64::new(0f64.to_bits()),
            usage: Family::default(),
            upstream: Family::default(),
            reloads: Family::default(),
            fallbacks: Counter::default(),
            truncated: Counter::default(),
            overloaded: Counter::default(),
            rate_limited: Counter::default(),
            in_flight: Gauge::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            connections_closed: Family::default(),
            request_latency: Histogram::default(),
            embed_latency: Histogram::default(),
            queue_latency: Histogram::default(),
        };
        registry.register(
            "requests",
            "HTTP responses by matched endpoint and status.",
            m.requests.clone(),
        );
        registry.register(
            "decisions",
            "Routing decisions by route and model (route=\"\" is a fallback).",
            m.decisions.clone(),
        );
        registry.register(
            "estimated_spend_usd",
            "Estimated cost of routed requests by chosen model.",
            m.spend.clone(),
        );
        registry.register(
            "reported_spend_usd",
            "Cost of usage reported through /v1/usage or the proxy's upstream answers, by model.",
            m.usage.clone(),
        );
        registry.register(
            "upstream_requests",
            "Proxy tries of upstream models by model and result.",
            m.upstream.clone(),
        );
        registry.register("reloads", "Index reloads by result.", m.reloads.clone());
        registry.register(
            "fallbacks",
            "Decisions that fell back to the default model.",
            m.fallbacks.clone(),
        );
        registry.register(
            "truncated_prompts",
            "Prompts cut to the model's token window.",
            m.truncated.clone(),
        );
        registry.register(
            "overloaded",
            "Requests refused with 429 because the embedding queue was full.",
            m.overloaded.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429 because their caller exceeded its rate limit.",
            m.rate_limited.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests received and not yet answered, this one included (a streamed answer counts until its headers are sent).",
            m.in_flight.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now.",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at once because --max-connections were open.",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the server closed because the client held them without sending, by reason.",
            m.connections_closed.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Route request latency, submission to answer.",
            m.request_latency.0.clone(),
        );
        registry.register(
            "embed_duration_seconds",
            "Forward-pass time of the batch each prompt rode in.",
            m.embed_latency.0.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time prompts waited for a worker.",
            m.queue_latency.0.clone(),
        );
        for reason in ["ok", "failed"] {
            // both series exist from the start, so that a dashboard sees a zero
            let _ = m.reloads.get_or_create(&ResultLabel { result: reason });
        }
        for reason in Closed::ALL {
            let _ = m.connections_closed.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        Metrics { registry, ..m }
    }
}

fn add_f64(cell: &AtomicU64, v: f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        Some((f64::from_bits(bits) + v).to_bits())
    });
}

impl Metrics {
    /// Counts a finished HTTP response by its matched endpoint, status and error kind (the
    /// `type` of the error body, when it is one). Called by one middleware for every response.
    pub fn response(&self, endpoint: &str, status: u16, error_kind: Option<&str>) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
        match error_kind {
            Some("overloaded") => {
                self.overloaded.inc();
            }
            Some("rate_limited") => {
                self.rate_limited.inc();
            }
            _ => {}
        }
    }

    /// Counts an HTTP request as in flight until the guard is dropped (its response is ready).
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Counts a client connection as open (until [`Metrics::connection_ended`]).
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// Counts a client connection's end, however it ended.
    pub fn connection_ended(&self) {
        self.connections_open.dec();
    }

    /// Counts a connection refused because too many were open.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a connection the server closed, and why.
    pub fn connection_closed(&self, reason: Closed) {
        self.connections_closed
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Counts a decision.
    pub fn decision(&self, route: Option<&str>, model: &str, truncated: bool) {
        self.decisions
            .get_or_create(&DecisionLabels {
                route: route.unwrap_or("").to_string(),
                model: model.to_string(),
            })
            .inc();
        if route.is_none() {
            self.fallbacks.inc();
        }
        if truncated {
            self.truncated.inc();
        }
    }

    /// Counts a routed request's estimated cost, beside the most expensive model's.
    pub fn spend(&self, model: &str, cost_usd: f64, premium_usd: f64) {
        self.spend
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .inc_by(cost_usd);
        add_f64(&self.routed_spend_usd, cost_usd);
        add_f64(&self.premium_spend_usd, premium_usd);
    }

    /// Counts an index reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts reported usage.
    pub fn usage(&self, model: &str, cost_usd: f64) {
        self.usage
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .inc_by(cost_usd);
    }

    /// Counts one try of an upstream model by the proxy: `result` is `ok`, `status_429`,
    /// `status_5xx`, `status_4xx`, `timeout` or `connect`.
    pub fn upstream(&self, model: &str, result: &'static str) {
        self.upstream
            .get_or_create(&UpstreamLabels {
                model: model.to_string(),
                result,
            })
            .inc();
    }

    /// Renders everything in the Prometheus text format, with the engine's `gauges` and the
    /// decision log's dropped lines when there are such.
    pub fn render(&self, gauges: Option<Gauges>, decision_log_dropped: Option<u64>) -> String {
        let mut scrape = Registry::with_prefix(PREFIX);
        let premium = f64::from_bits(self.premium_spend_usd.load(Ordering::Relaxed));
        let routed = f64::from_bits(self.routed_spend_usd.load(Ordering::Relaxed));
        scrape.register(
            "estimated_savings_usd",
            "Estimated cost saved against sending every routed request to the catalog's most expensive model.",
            ConstCounter::new(premium - routed),
        );
        if let Some(g) = gauges {
            scrape.register(
                "queue_length",
                "Prompts waiting for a worker.",
                ConstGauge::new(g.queue_len as i64),
            );
            scrape.register(
                "index_vectors",
                "Vectors in the live index.",
                ConstGauge::new(g.index_vectors as i64),
            );
            scrape.register(
                "embed_cache_hits",
                "Prompts answered from the embedding cache.",
                ConstCounter::new(g.cache_hits),
            );
            scrape.register(
                "embed_cache_misses",
                "Prompts that needed a forward pass.",
                ConstCounter::new(g.cache_misses),
            );
            scrape.register(
                "embed_cache_entries",
                "Embeddings held in the cache.",
                ConstGauge::new(g.cache_entries as i64),
            );
        }
        if let Some(dropped) = decision_log_dropped {
            scrape.register(
                "decision_log_dropped",
                "Decision-log lines dropped because the writer was behind.",
                ConstCounter::new(dropped),
            );
        }
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &scrape))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.response("/v1/route", 200, None);
        m.response("/v1/route", 429, Some("overloaded"));
        m.response("/v1/route", 429, Some("rate_limited"));
        m.decision(Some("orders"), "small", false);
        m.decision(None, "default", true);
        m.request_latency.observe(0.004);
        let text = m.render(
            Some(Gauges {
                queue_len: 3,
                index_vectors: 10,
                ..Gauges::default()
            }),
            None,
        );
        assert!(text.contains("pointsman_requests_total{endpoint=\"/v1/route\",status=\"200\"} 1"));
        assert!(text.contains("pointsman_decisions_total{route=\"orders\",model=\"small\"} 1"));
        assert!(text.contains("pointsman_fallbacks_total 1"));
        assert!(text.contains("pointsman_overloaded_total 1"), "{text}");
        assert!(text.contains("pointsman_rate_limited_total 1"), "{text}");
        assert!(text.contains("pointsman_request_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("pointsman_request_duration_seconds_bucket{le=\"0.003\"} 0"));
        assert!(text.contains("pointsman_request_duration_seconds_count 1"));
        assert!(text.contains("pointsman_queue_length 3"));
        assert!(text.contains("pointsman_reloads_total{result=\"failed\"} 0"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.decision(Some("a\"b\\c\nd"), "m", false);
        let text = m.render(None, None);
        assert!(
            text.contains(r#"pointsman_decisions_total{route="a\"b\\c\nd",model="m"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn requests_count_in_flight_until_answered() {
        let m = Metrics::default();
        let shown = |m: &Metrics| {
            m.render(None, None)
                .lines()
                .find_map(|l| l.strip_prefix("pointsman_http_requests_in_flight "))
                .map(str::to_owned)
        };
        let first = m.in_flight();
        let second = m.in_flight();
        assert_eq!(shown(&m).as_deref(), Some("2"));
        drop(first);
        assert_eq!(shown(&m).as_deref(), Some("1"));
        drop(second);
        assert_eq!(shown(&m).as_deref(), Some("0"));
    }
}
