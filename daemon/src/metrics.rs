//! Prometheus text exposition (version 0.0.4) from plain atomics: request counts by route and
//! status, queue depth, generation latency histogram, images, batches, refused peers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the generation latency histogram.
const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Generation requests admitted and not yet finished (waiting or running).
    pub queue_depth: AtomicUsize,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    images: AtomicU64,
    batches: AtomicU64,
    batched_requests: AtomicU64,
    rejected_full: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    refused_peers: AtomicU64,
}

impl Metrics {
    pub fn request(&self, method: &str, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
    }
    pub fn generation_done(&self, seconds: f64, images: usize) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.images.fetch_add(images as u64, Ordering::Relaxed);
    }
    pub fn batch(&self, requests: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched_requests
            .fetch_add(requests as u64, Ordering::Relaxed);
    }
    pub fn rejected_full(&self) {
        self.rejected_full.fetch_add(1, Ordering::Relaxed);
    }
    /// A generation that ended early: cancelled (client gone, shutdown) or failed.
    pub fn ended(&self, cancelled: bool) {
        if cancelled {
            self.cancelled.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn refused_peer(&self) {
        self.refused_peers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, queue_len: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP dpoimgd_requests_total HTTP requests by method, route and status."
        );
        let _ = writeln!(s, "# TYPE dpoimgd_requests_total counter");
        for ((m, r, st), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                s,
                "dpoimgd_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{st}\"}} {n}"
            );
        }
        let gauge = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        gauge(
            &mut s,
            "dpoimgd_queue_depth",
            "Generation requests waiting or running.",
            self.queue_depth.load(Ordering::Relaxed) as u64,
        );
        gauge(
            &mut s,
            "dpoimgd_queue_capacity",
            "Most generation requests admitted at once (--queue-len).",
            queue_len as u64,
        );
        let _ = writeln!(s, "# HELP dpoimgd_generate_latency_seconds Time from admission to the last image of a successful generation.");
        let _ = writeln!(s, "# TYPE dpoimgd_generate_latency_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "dpoimgd_generate_latency_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "dpoimgd_generate_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "dpoimgd_generate_latency_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "dpoimgd_generate_latency_seconds_count {count}");
        counter(
            &mut s,
            "dpoimgd_images_total",
            "Images generated.",
            self.images.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "dpoimgd_batches_total",
            "UNet batch runs (one or more requests each).",
            self.batches.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "dpoimgd_batched_requests_total",
            "Requests run inside those batches.",
            self.batched_requests.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "dpoimgd_rejected_queue_full_total",
            "Generation requests answered 429 because the queue was full.",
            self.rejected_full.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "dpoimgd_cancelled_total",
            "Generation requests cancelled (client disconnected or shutdown).",
            self.cancelled.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "dpoimgd_failed_total",
            "Generation requests that ended with an error after admission.",
            self.failed.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "dpoimgd_refused_peers_total",
            "Connections dropped because the peer had another uid.",
            self.refused_peers.load(Ordering::Relaxed),
        );
        s
    }
}
