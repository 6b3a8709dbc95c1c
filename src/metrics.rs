//! Prometheus metrics, rendered by hand in the text exposition format (one small dependency-free
//! registry instead of a metrics stack that pulls a TLS library). Every name starts with
//! `pointsman_`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation in seconds.
    pub fn observe(&self, seconds: f64) {
        for (bound, bucket) in LATENCY_BUCKETS_S.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in LATENCY_BUCKETS_S.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {count}");
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
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (endpoint, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Decisions by (route, model); fallbacks have route `""`.
    decisions: Mutex<BTreeMap<(String, String), u64>>,
    /// Estimated spend by model, and what the most expensive model would have cost.
    spend: Mutex<BTreeMap<String, f64>>,
    premium_spend: Mutex<f64>,
    /// Reported (actual) spend by model.
    usage: Mutex<BTreeMap<String, f64>>,
    /// Proxy tries of upstream models by (model, result).
    upstream: Mutex<BTreeMap<(String, &'static str), u64>>,
    fallbacks: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    truncated: AtomicU64,
    overloaded: AtomicU64,
    in_flight: AtomicU64,
    /// End-to-end latency of route requests.
    pub request_latency: Histogram,
    /// Time spent embedding (per prompt, shared batch time).
    pub embed_latency: Histogram,
    /// Time spent waiting in the queue.
    pub queue_latency: Histogram,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts a finished request.
    pub fn request(&self, endpoint: &str, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
        if status == 429 {
            self.overloaded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an HTTP request as in flight until the guard is dropped (its response is ready).
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Counts a decision.
    pub fn decision(&self, route: Option<&str>, model: &str, truncated: bool) {
        *self
            .decisions
            .lock()
            .expect("metrics lock")
            .entry((route.unwrap_or("").to_string(), model.to_string()))
            .or_default() += 1;
        if route.is_none() {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        if truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a routed request's estimated cost, beside the most expensive model's.
    pub fn spend(&self, model: &str, cost_usd: f64, premium_usd: f64) {
        *self
            .spend
            .lock()
            .expect("metrics lock")
            .entry(model.to_string())
            .or_default() += cost_usd;
        *self.premium_spend.lock().expect("metrics lock") += premium_usd;
    }

    /// Counts an index reload.
    pub fn reload(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts reported usage.
    pub fn usage(&self, model: &str, cost_usd: f64) {
        *self
            .usage
            .lock()
            .expect("metrics lock")
            .entry(model.to_string())
            .or_default() += cost_usd;
    }

    /// Counts one try of an upstream model by the proxy: `result` is `ok`, `status_429`,
    /// `status_5xx`, `status_4xx`, `timeout` or `connect`.
    pub fn upstream(&self, model: &str, result: &'static str) {
        *self
            .upstream
            .lock()
            .expect("metrics lock")
            .entry((model.to_string(), result))
            .or_default() += 1;
    }

    /// Renders everything in the Prometheus text format.
    pub fn render(&self, gauges: Option<Gauges>) -> String {
        let mut out = String::new();
        out.push_str("# HELP pointsman_requests_total HTTP requests by endpoint and status.\n# TYPE pointsman_requests_total counter\n");
        for ((endpoint, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "pointsman_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                escape(endpoint)
            );
        }
        out.push_str("# HELP pointsman_decisions_total Routing decisions by route and model (route=\"\" is a fallback).\n# TYPE pointsman_decisions_total counter\n");
        for ((route, model), n) in self.decisions.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "pointsman_decisions_total{{route=\"{}\",model=\"{}\"}} {n}",
                escape(route),
                escape(model)
            );
        }
        let spend = self.spend.lock().expect("metrics lock");
        out.push_str("# HELP pointsman_estimated_spend_usd_total Estimated cost of routed requests by chosen model.\n# TYPE pointsman_estimated_spend_usd_total counter\n");
        for (model, usd) in spend.iter() {
            let _ = writeln!(
                out,
                "pointsman_estimated_spend_usd_total{{model=\"{}\"}} {usd}",
                escape(model)
            );
        }
        let premium = *self.premium_spend.lock().expect("metrics lock");
        let saved = premium - spend.values().sum::<f64>();
        drop(spend);
        let _ = writeln!(
            out,
            "# HELP pointsman_estimated_savings_usd_total Estimated cost saved against sending every routed request to the catalog's most expensive model.\n# TYPE pointsman_estimated_savings_usd_total counter\npointsman_estimated_savings_usd_total {saved}"
        );
        out.push_str("# HELP pointsman_reported_spend_usd_total Cost of usage reported through /v1/usage, by model.\n# TYPE pointsman_reported_spend_usd_total counter\n");
        for (model, usd) in self.usage.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "pointsman_reported_spend_usd_total{{model=\"{}\"}} {usd}",
                escape(model)
            );
        }
        out.push_str("# HELP pointsman_upstream_requests_total Proxy tries of upstream models by model and result.\n# TYPE pointsman_upstream_requests_total counter\n");
        for ((model, result), n) in self.upstream.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "pointsman_upstream_requests_total{{model=\"{}\",result=\"{result}\"}} {n}",
                escape(model)
            );
        }
        let _ = writeln!(
            out,
            "# HELP pointsman_reloads_total Index reloads by result.\n# TYPE pointsman_reloads_total counter\npointsman_reloads_total{{result=\"ok\"}} {}\npointsman_reloads_total{{result=\"failed\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
        let counters = [
            (
                "pointsman_fallbacks_total",
                "Decisions that fell back to the default model.",
                &self.fallbacks,
            ),
            (
                "pointsman_truncated_prompts_total",
                "Prompts cut to the model's token window.",
                &self.truncated,
            ),
            (
                "pointsman_overloaded_total",
                "Requests refused with 429 because the queue was full.",
                &self.overloaded,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP pointsman_http_requests_in_flight HTTP requests received and not yet answered, this one included (a streamed answer counts until its headers are sent).\n# TYPE pointsman_http_requests_in_flight gauge\npointsman_http_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let histograms = [
            (
                "pointsman_request_duration_seconds",
                "Route request latency, submission to answer.",
                &self.request_latency,
            ),
            (
                "pointsman_embed_duration_seconds",
                "Forward-pass time of the batch each prompt rode in.",
                &self.embed_latency,
            ),
            (
                "pointsman_queue_duration_seconds",
                "Time prompts waited for a worker.",
                &self.queue_latency,
            ),
        ];
        for (name, help, h) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
        if let Some(g) = gauges {
            for (name, kind, help, value) in [
                (
                    "pointsman_queue_length",
                    "gauge",
                    "Prompts waiting for a worker.",
                    g.queue_len as u64,
                ),
                (
                    "pointsman_index_vectors",
                    "gauge",
                    "Vectors in the live index.",
                    g.index_vectors as u64,
                ),
                (
                    "pointsman_embed_cache_hits_total",
                    "counter",
                    "Prompts answered from the embedding cache.",
                    g.cache_hits,
                ),
                (
                    "pointsman_embed_cache_misses_total",
                    "counter",
                    "Prompts that needed a forward pass.",
                    g.cache_misses,
                ),
                (
                    "pointsman_embed_cache_entries",
                    "gauge",
                    "Embeddings held in the cache.",
                    g.cache_entries as u64,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("/v1/route", 200);
        m.request("/v1/route", 429);
        m.decision(Some("orders"), "small", false);
        m.decision(None, "default", true);
        m.request_latency.observe(0.004);
        let text = m.render(Some(Gauges {
            queue_len: 3,
            index_vectors: 10,
            ..Gauges::default()
        }));
        assert!(text.contains("pointsman_requests_total{endpoint=\"/v1/route\",status=\"200\"} 1"));
        assert!(text.contains("pointsman_decisions_total{route=\"orders\",model=\"small\"} 1"));
        assert!(text.contains("pointsman_fallbacks_total 1"));
        assert!(text.contains("pointsman_overloaded_total 1"));
        assert!(text.contains("pointsman_request_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("pointsman_request_duration_seconds_bucket{le=\"0.003\"} 0"));
        assert!(text.contains("pointsman_request_duration_seconds_count 1"));
        assert!(text.contains("pointsman_queue_length 3"));
    }

    #[test]
    fn requests_count_in_flight_until_answered() {
        let m = Metrics::default();
        let shown = |m: &Metrics| {
            m.render(None)
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
