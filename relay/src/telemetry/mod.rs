//! Logs to stderr and, when `--otlp-endpoint` is set and the relay is built with the `otlp`
//! feature (a default), spans exported over OTLP/HTTP (protobuf): see [`otlp`] for what is exported.

use std::io::IsTerminal as _;

use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[cfg(feature = "otlp")]
pub mod otlp;

/// The installed telemetry; [`Telemetry::shutdown`] flushes spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporter thread.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}

/// The OTLP/HTTP traces URL for an endpoint given as a base (`http://host:4318`) or as the full
/// traces URL (`…/v1/traces`).
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Installs the global subscriber: `RUST_LOG` (default `info`) filtered logs to stderr (colored
/// only on a terminal), plus, when `otlp_endpoint` is given, the OTLP exporter of `info` spans
/// (an error in a relay built without the `otlp` feature).
pub fn init(otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init()
            .map_err(|e| e.to_string())?;
        return Ok(Telemetry {
            #[cfg(feature = "otlp")]
            provider: None,
        });
    };
    #[cfg(feature = "otlp")]
    {
        let (provider, otel) = otlp::layer(endpoint)?;
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(otel)
            .try_init()
            .map_err(|e| e.to_string())?;
        Ok(Telemetry {
            provider: Some(provider),
        })
    }
    #[cfg(not(feature = "otlp"))]
    Err(format!(
        "--otlp-endpoint {endpoint}: this relay was built without the `otlp` feature"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
