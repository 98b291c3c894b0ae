//! The bounded span queue between a request and the OTLP collector: spans go into a queue of
//! fixed size without ever waiting, and one thread exports them in batches. A slow or dead
//! collector therefore costs requests nothing; spans that find the queue full, or whose export
//! fails, are dropped and counted (`keel_tracing_spans_dropped_total` on `/metrics`).
//!
//! Written here rather than using the SDK's `BatchSpanProcessor` because that one counts its
//! drops only for a log line at shutdown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

/// Spans exported, and dropped by cause, since the process started.
static SPANS_EXPORTED: AtomicU64 = AtomicU64::new(0);
static SPANS_DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static SPANS_DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

/// What `/metrics` shows: spans exported, dropped because the queue was full, dropped because
/// their export failed.
pub fn counts() -> (u64, u64, u64) {
    (
        SPANS_EXPORTED.load(Ordering::Relaxed),
        SPANS_DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        SPANS_DROPPED_EXPORT_FAILED.load(Ordering::Relaxed),
    )
}

/// The queue's limits; defaults are OpenTelemetry's, overridden by the standard `OTEL_BSP_*`
/// variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub queue_spans_max: usize,
    pub batch_spans_max: usize,
    pub schedule_delay: Duration,
    pub export_timeout: Duration,
}

impl QueueConfig {
    pub fn from_env(read: impl Fn(&str) -> Option<String>) -> QueueConfig {
        let number = |name: &str, default: u64| {
            read(name)
                .and_then(|value| value.trim().parse::<u64>().ok())
                .filter(|value| *value > 0)
                .unwrap_or(default)
        };
        let queue_spans_max = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048).min(1 << 20) as usize;
        QueueConfig {
            queue_spans_max,
            batch_spans_max: (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) as usize)
                .min(queue_spans_max),
            schedule_delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            export_timeout: Duration::from_millis(number("OTEL_BSP_EXPORT_TIMEOUT", 30_000)),
        }
    }
}

/// What the requests and the export thread share, under one lock.
#[derive(Debug, Default)]
struct Queue {
    spans: VecDeque<SpanData>,
    /// Set before the first span (the provider hands the resource to its processors).
    resource: Option<Resource>,
    /// Callers of force_flush waiting for everything queued before them to be exported.
    flushes: Vec<SyncSender<()>>,
    /// Set by shutdown: export what is queued, shut the exporter down, answer, stop.
    shutdown: Option<SyncSender<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the export thread: a full batch, a flush, a shutdown.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A span processor with a bounded queue and an export thread. A span's end takes the lock for
/// a push and wakes the thread only when a batch is full, so an ended span costs no thread
/// wake-up (the thread otherwise wakes every schedule delay).
#[derive(Debug)]
pub struct BoundedSpanProcessor {
    shared: Arc<Shared>,
    config: QueueConfig,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl BoundedSpanProcessor {
    /// Starts the export thread; exports run on `runtime` (the OTLP clients need tokio).
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        config: QueueConfig,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<BoundedSpanProcessor> {
        let shared = Arc::new(Shared::default());
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("keel-span-export".into())
                .spawn(move || export_loop(exporter, &config, &runtime, &shared))?
        };
        Ok(BoundedSpanProcessor {
            shared,
            config,
            worker: Mutex::new(Some(worker)),
        })
    }
}

impl SpanProcessor for BoundedSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let mut queue = self.shared.lock();
        if queue.shutdown.is_some() || queue.spans.len() >= self.config.queue_spans_max {
            drop(queue);
            SPANS_DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.spans.push_back(span);
        let batch_full = queue.spans.len() == self.config.batch_spans_max;
        drop(queue);
        if batch_full {
            self.shared.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, wait) = sync_channel(1);
        self.shared.lock().flushes.push(done);
        self.shared.wake.notify_one();
        let timeout = self.config.export_timeout * 2;
        wait.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let (done, wait) = sync_channel(1);
        {
            let mut queue = self.shared.lock();
            if queue.shutdown.is_some() {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            queue.shutdown = Some(done);
        }
        self.shared.wake.notify_one();
        wait.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))?;
        if let Some(worker) = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = worker.join();
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.shared.lock().resource = Some(resource.clone());
        self.shared.wake.notify_one();
    }
}

/// What the export thread does next, decided under the lock.
struct Work {
    batch: Vec<SpanData>,
    resource: Option<Resource>,
    flushes: Vec<SyncSender<()>>,
    shutdown: Option<SyncSender<()>>,
}

fn export_loop<E: SpanExporter>(
    mut exporter: E,
    config: &QueueConfig,
    runtime: &tokio::runtime::Handle,
    shared: &Shared,
) {
    let mut deadline = Instant::now() + config.schedule_delay;
    loop {
        let work = {
            let mut queue = shared.lock();
            loop {
                let urgent = queue.spans.len() >= config.batch_spans_max
                    || queue.resource.is_some()
                    || !queue.flushes.is_empty()
                    || queue.shutdown.is_some();
                let now = Instant::now();
                if urgent || now >= deadline {
                    break;
                }
                queue = shared
                    .wake
                    .wait_timeout(queue, deadline - now)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            // A flush or a shutdown takes everything; otherwise one batch at a time.
            let everything = !queue.flushes.is_empty() || queue.shutdown.is_some();
            let take = if everything {
                queue.spans.len()
            } else {
                queue.spans.len().min(config.batch_spans_max)
            };
            Work {
                batch: queue.spans.drain(..take).collect(),
                resource: queue.resource.take(),
                flushes: std::mem::take(&mut queue.flushes),
                shutdown: queue.shutdown.take(),
            }
        };
        if let Some(resource) = work.resource {
            exporter.set_resource(&resource);
        }
        let full_batch = work.batch.len() >= config.batch_spans_max;
        let mut rest = work.batch;
        while !rest.is_empty() {
            let later = rest.split_off(rest.len().min(config.batch_spans_max));
            export(&exporter, rest, config, runtime);
            rest = later;
        }
        if !full_batch {
            // The schedule delay counts from the last export that was not for a full batch.
            deadline = Instant::now() + config.schedule_delay;
        }
        for done in work.flushes {
            let _ = done.send(());
        }
        if let Some(done) = work.shutdown {
            let _ = exporter.shutdown();
            let _ = done.send(());
            return;
        }
    }
}

fn export<E: SpanExporter>(
    exporter: &E,
    batch: Vec<SpanData>,
    config: &QueueConfig,
    runtime: &tokio::runtime::Handle,
) {
    if batch.is_empty() {
        return;
    }
    let count = batch.len() as u64;
    let result = runtime.block_on(async {
        tokio::time::timeout(config.export_timeout, exporter.export(batch)).await
    });
    match result {
        Ok(Ok(())) => SPANS_EXPORTED.fetch_add(count, Ordering::Relaxed),
        Ok(Err(_)) | Err(_) => SPANS_DROPPED_EXPORT_FAILED.fetch_add(count, Ordering::Relaxed),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what it is asked to export.
    #[derive(Debug, Clone, Default)]
    struct Counting(Arc<AtomicU64>);

    impl SpanExporter for Counting {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_flush_exports_the_rest() {
        use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let exported = Counting::default();
        let config = QueueConfig {
            queue_spans_max: 4,
            batch_spans_max: 8,
            schedule_delay: Duration::from_secs(3600),
            export_timeout: Duration::from_secs(5),
        };
        let processor =
            BoundedSpanProcessor::start(exported.clone(), config, runtime.handle().clone())
                .unwrap();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        let dropped_before = counts().1;
        for _ in 0..6 {
            tracer.start("span").end();
        }
        // Nothing is exported before a batch fills or the delay passes: no wake-up per span.
        assert_eq!(exported.0.load(Ordering::Relaxed), 0);
        assert_eq!(counts().1 - dropped_before, 2);
        provider.force_flush().unwrap();
        assert_eq!(exported.0.load(Ordering::Relaxed), 4);
        provider.shutdown().unwrap();
    }

    #[test]
    fn limits_come_from_otel_bsp_variables() {
        let config = QueueConfig::from_env(|name| match name {
            "OTEL_BSP_MAX_QUEUE_SIZE" => Some("100".into()),
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" => Some("500".into()),
            "OTEL_BSP_SCHEDULE_DELAY" => Some("junk".into()),
            _ => None,
        });
        assert_eq!(config.queue_spans_max, 100);
        // A batch never exceeds the queue.
        assert_eq!(config.batch_spans_max, 100);
        assert_eq!(config.schedule_delay, Duration::from_secs(5));
        assert_eq!(config.export_timeout, Duration::from_secs(30));
    }
}
