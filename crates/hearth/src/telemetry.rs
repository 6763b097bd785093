//! Logs to stderr, and spans to an OpenTelemetry collector over OTLP/HTTP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard variable; the
//! exporter also honours the other `OTEL_EXPORTER_OTLP_*` settings).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Send the spans still buffered. Call outside the async runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("hearth: warning: flushing spans to the OTLP endpoint failed: {e}");
            }
        }
    }
}

/// Install the subscriber: stderr logs filtered by `-v`/`HEARTH_LOG`, plus
/// OTLP export of info-level spans when configured. Call before starting
/// the async runtime (the exporter's HTTP client blocks on its own thread).
pub fn init(verbose: u8) -> Telemetry {
    let default = match verbose {
        0 => "warn",
        1 => "info,hearth=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .compact()
        .with_filter(filter);

    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    let provider = endpoint.and_then(|endpoint| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_attributes([
                                KeyValue::new("service.name", "hearth"),
                                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                            ])
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("hearth: warning: OTEL_EXPORTER_OTLP_ENDPOINT={endpoint} is set but the exporter cannot start: {e}; spans are not exported");
                None
            }
        }
    });
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("hearth"))
            .with_filter(EnvFilter::new("info"))
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Telemetry { provider }
}
