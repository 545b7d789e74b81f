//! Prometheus metrics, one registry per [`crate::startup::Application`] so that several
//! instances in one process (as in the tests) count apart.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub kms_calls: IntCounterVec,
    pub unwrap_cache_hits: IntCounter,
    pub unwrap_cache_misses: IntCounter,
    pub unwrap_cache_entries: IntGauge,
    pub row_cache_requests: IntCounterVec,
    pub row_cache_entries: IntGauge,
    pub row_cache_resets: IntCounter,
    pub refreshes: IntCounterVec,
    pub refresh_joins: IntCounter,
    pub provider_latency: HistogramVec,
    pub lock_wait: HistogramVec,
    pub revocations: IntCounterVec,
    pub superseded_revocations: IntCounterVec,
    pub grants: IntGaugeVec,
    pub keeper_lag: Gauge,
    pub webhook_deliveries: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub lookup_batch_size: Histogram,
    pub http_connections: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("token_store".into()), None)
            .expect("a static prefix is valid");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        Self {
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            ),
            http_latency: histogram_vec(
                "http_request_duration_seconds",
                "HTTP request latency by route and method",
                &["route", "method"],
            ),
            kms_calls: counter_vec(
                "kms_requests_total",
                "KMS calls by operation and outcome",
                &["operation", "outcome"],
            ),
            unwrap_cache_hits: counter("unwrap_cache_hits_total", "Data-key unwrap cache hits"),
            unwrap_cache_misses: counter(
                "unwrap_cache_misses_total",
                "Data-key unwrap cache misses (each may cost one KMS Decrypt)",
            ),
            unwrap_cache_entries: {
                let g = IntGauge::new(
                    "unwrap_cache_entries",
                    "Unwrapped data keys held in the cache (at the last scrape)",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            row_cache_requests: counter_vec(
                "row_cache_requests_total",
                "Reads of the sealed-row cache: hit, miss (read from the database) or bypass (the cache was not serving, or the cached row needed the database)",
                &["outcome"],
            ),
            row_cache_entries: {
                let g = IntGauge::new(
                    "row_cache_entries",
                    "Sealed rows held in the cache (at the last scrape)",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            row_cache_resets: counter(
                "row_cache_resets_total",
                "Times the sealed-row cache was emptied because its listening connection failed or fell silent",
            ),
            refreshes: counter_vec(
                "refreshes_total",
                "Token refreshes by provider, outcome and trigger (on_demand, ahead, keep_alive)",
                &["provider", "outcome", "trigger"],
            ),
            refresh_joins: counter(
                "refresh_single_flight_joins_total",
                "Callers that joined a refresh already in flight in this process",
            ),
            provider_latency: histogram_vec(
                "provider_request_duration_seconds",
                "Provider token/revoke endpoint latency",
                &["provider", "endpoint"],
            ),
            lock_wait: histogram_vec(
                "refresh_lock_wait_seconds",
                "Time spent waiting for the refresh advisory lock",
                &["provider"],
            ),
            revocations: counter_vec(
                "revocations_total",
                "Revocations at the provider by provider and outcome",
                &["provider", "outcome"],
            ),
            superseded_revocations: counter_vec(
                "superseded_revocations_total",
                "Refresh tokens of replaced grants revoked at the provider, by provider and outcome",
                &["provider", "outcome"],
            ),
            grants: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "grants",
                        "Stored grants by state (active, degraded, reauthorization_required) and provider, as the keeper last counted them",
                    ),
                    &["state", "provider"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            keeper_lag: {
                let g = Gauge::new(
                    "keeper_lag_seconds",
                    "How overdue the most overdue grant was at the keeper's last look (0: none due)",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            webhook_deliveries: counter_vec(
                "webhook_deliveries_total",
                "Webhook delivery attempts by endpoint and outcome (delivered, retry, failed)",
                &["endpoint", "outcome"],
            ),
            auth_failures: counter_vec(
                "auth_failures_total",
                "Requests refused 401 by reason (missing, malformed, unknown_key)",
                &["reason"],
            ),
            http_connections: {
                let g = IntGauge::new(
                    "http_connections",
                    "HTTP connections open now (at most [server] max_connections)",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            lookup_batch_size: {
                let opts = HistogramOpts::new(
                    "lookup_batch_size",
                    "Lookups of the read path answered by one statement",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
                let h = Histogram::with_opts(opts).expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("Prometheus text is UTF-8")
    }
}

/// The sum of the samples of `name` in Prometheus text (as [`Metrics::render`] writes it)
/// whose labels include `labels`; 0 if there are none. For readers of `/metrics`: the tests
/// and the benchmark.
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
