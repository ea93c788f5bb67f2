//! Trace settings as the configuration model hands them over: plain values,
//! no runtime, so the validator can build them without linking an exporter.

use std::collections::BTreeMap;
use std::time::Duration;

/// The default share of requests without a sampled caller that start a trace.
pub const DEFAULT_SAMPLING_RATIO: f64 = 0.01;
/// Spans waiting for export at most (the OpenTelemetry SDK's default).
pub const DEFAULT_MAX_QUEUE: usize = 2048;
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, e.g. `http://collector:4317`.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, e.g. `http://collector:4318/v1/traces`.
    HttpProtobuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's URL (`http://` or `https://`, with the path for HTTP).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Sent with every export (an API key, a tenant).
    pub headers: BTreeMap<String, String>,
    /// Parent-based: a caller's sampled flag is followed; a request with no
    /// trace context starts one with this probability.
    pub sampling_ratio: f64,
    /// Resource attributes of every span (`service.name` among them).
    pub resource: BTreeMap<String, String>,
    pub max_queue: usize,
    pub export_timeout: Duration,
}

/// The ratio is checked to be within 0..=1, never NaN.
impl Eq for TraceSettings {}

/// A collector URL the exporters can use: `http://` or `https://` with a
/// host (the exporters would take a URL without a scheme as https).
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    match endpoint.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Ok(())
        }
        _ => Err(format!(
            "{endpoint:?} is not an http:// or https:// URL (e.g. \"http://collector:4317\")"
        )),
    }
}

pub fn check_sampling_ratio(ratio: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(format!("{ratio} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_a_scheme_and_a_host() {
        assert!(check_endpoint("http://collector:4317").is_ok());
        assert!(check_endpoint("https://collector/v1/traces").is_ok());
        for bad in ["collector:4317", "grpc://collector:4317", "http://", ""] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        assert!(check_sampling_ratio(0.0).is_ok() && check_sampling_ratio(1.0).is_ok());
        assert!(check_sampling_ratio(1.5).is_err() && check_sampling_ratio(f64::NAN).is_err());
    }
}
