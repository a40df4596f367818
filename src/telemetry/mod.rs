//! Logs, traces and metrics for the binary.
//!
//! - Logs: `RUST_LOG`-style filtering (default `info`), human-readable on a
//!   terminal or JSON lines (`--log-format json`); the span fields (job id,
//!   RPC) come with every line.
//! - Traces: OpenTelemetry over OTLP/gRPC, configured by the standard
//!   variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`…). With no
//!   endpoint set (or `OTEL_SDK_DISABLED=true`) no tracing layer is
//!   installed at all: no cost. Calls join their caller's trace in the
//!   formats `OTEL_PROPAGATORS` names (W3C trace context and baggage by
//!   default, B3 on request), and the programs `exec` runs get their
//!   item's trace context in `TRACEPARENT` (see [`propagation`]).
//! - Metrics: Prometheus exposition at `http://<--metrics-listen>/metrics`.

mod b3;
pub mod propagation;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use std::{io::IsTerminal, net::SocketAddr};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `init` set up; `shutdown` flushes the traces still buffered.
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing_enabled(&self) -> bool {
        self.tracer.is_some()
    }

    pub fn shutdown(self) {
        if let Some(provider) = self.tracer
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not flush traces: {e}");
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Builds the OTLP exporter and tracer provider, if an endpoint is set.
fn tracer_provider() -> anyhow::Result<Option<SdkTracerProvider>> {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint =
        env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if disabled || !endpoint {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT): {e}"))?;
    let mut resource = Resource::builder();
    let named = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("jobvisor");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok(Some(provider))
}

/// Installs logging (and tracing export when configured). A second call
/// does nothing. Refuses an `OTEL_PROPAGATORS` it does not know.
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let propagators = std::env::var("OTEL_PROPAGATORS").ok();
    opentelemetry::global::set_text_map_propagator(propagation::from_setting(
        propagators.as_deref(),
    )?);
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,ractor=warn"))
    };
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let provider = tracer_provider()?;
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("jobvisor"))
            // Item attempts are debug spans of their own target, exported
            // but kept out of the logs.
            .with_filter(EnvFilter::new("info,jobvisor::item=debug"))
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    Ok(Telemetry {
        tracer: if installed { provider } else { None },
    })
}

/// Buckets for the duration histograms (seconds): 100 µs to 10 min.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];
/// Buckets for batch sizes.
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Serves Prometheus metrics at `http://addr/metrics` and installs the
/// process-wide recorder.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES)?
        .install()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot serve metrics on {addr}: {e}. Another process (another jobvisor \
                 server on this machine?) may hold that port: pick another address with \
                 --metrics-listen (JOBVISOR_METRICS_LISTEN), e.g. 127.0.0.1:{}, or `off`",
                addr.port().wrapping_add(1)
            )
        })?;
    crate::metrics::describe();
    Ok(())
}
