//! The bounded span queue between a request and the OTLP collector: spans go into a queue of
//! fixed size without ever waiting, and one thread exports them in batches. A slow or dead
//! collector therefore costs requests nothing; spans that find the queue full, or whose export
//! fails, are dropped and counted (`keel_tracing_spans_dropped_total` on `/metrics`).
//!
//! Written here rather than using the SDK's `BatchSpanProcessor` because that one counts its
//! drops only for a log line at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
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

enum Message {
    Span(Box<SpanData>),
    Resource(Resource),
    Flush(SyncSender<()>),
    Shutdown(SyncSender<()>),
}

/// A span processor with a bounded queue and an export thread.
#[derive(Debug)]
pub struct BoundedSpanProcessor {
    sender: SyncSender<Message>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl BoundedSpanProcessor {
    /// Starts the export thread; exports run on `runtime` (the OTLP clients need tokio).
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        config: QueueConfig,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<BoundedSpanProcessor> {
        let (sender, receiver) = sync_channel(config.queue_spans_max);
        let worker = std::thread::Builder::new()
            .name("keel-span-export".into())
            .spawn(move || export_loop(exporter, &config, &runtime, &receiver))?;
        Ok(BoundedSpanProcessor {
            sender,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Sends a control message and waits (at most `timeout`) for the thread to act on it.
    fn control(
        &self,
        message: impl FnOnce(SyncSender<()>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, wait) = sync_channel(1);
        self.sender
            .send(message(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        wait.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for BoundedSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.sender.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                SPANS_DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Message::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.control(Message::Shutdown, timeout);
        if result.is_ok() {
            if let Some(worker) = self
                .worker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
            {
                let _ = worker.join();
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Before any span: the queue is empty, so this never waits.
        let _ = self.sender.send(Message::Resource(resource.clone()));
    }
}

fn export_loop<E: SpanExporter>(
    mut exporter: E,
    config: &QueueConfig,
    runtime: &tokio::runtime::Handle,
    receiver: &Receiver<Message>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(config.batch_spans_max);
    let mut deadline = Instant::now() + config.schedule_delay;
    let export = |exporter: &E, batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let count = spans.len() as u64;
        let result = runtime.block_on(async {
            tokio::time::timeout(config.export_timeout, exporter.export(spans)).await
        });
        match result {
            Ok(Ok(())) => SPANS_EXPORTED.fetch_add(count, Ordering::Relaxed),
            Ok(Err(_)) | Err(_) => SPANS_DROPPED_EXPORT_FAILED.fetch_add(count, Ordering::Relaxed),
        };
    };
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                if batch.len() >= config.batch_spans_max {
                    export(&exporter, &mut batch);
                    deadline = Instant::now() + config.schedule_delay;
                }
            }
            Ok(Message::Resource(resource)) => exporter.set_resource(&resource),
            Ok(Message::Flush(done)) => {
                export(&exporter, &mut batch);
                let _ = done.send(());
            }
            Ok(Message::Shutdown(done)) => {
                export(&exporter, &mut batch);
                let _ = exporter.shutdown();
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&exporter, &mut batch);
                deadline = Instant::now() + config.schedule_delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&exporter, &mut batch);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
