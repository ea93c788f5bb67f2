//! The bits of gRPC the proxy must understand without decoding messages:
//! recognising gRPC requests, `grpc-timeout`, and status codes.

use std::time::Duration;

pub use gridmesh_config::route::is_grpc;
use http::{HeaderMap, HeaderValue};

pub const GRPC_TIMEOUT: &str = "grpc-timeout";
pub const GRPC_STATUS: &str = "grpc-status";
pub const GRPC_MESSAGE: &str = "grpc-message";

/// gRPC status codes the proxy produces or reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    InvalidArgument = 3,
    NotFound = 5,
    FailedPrecondition = 9,
    Internal = 13,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Unavailable = 14,
}

impl Code {
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Code::InvalidArgument => "3",
            Code::DeadlineExceeded => "4",
            Code::NotFound => "5",
            Code::FailedPrecondition => "9",
            Code::PermissionDenied => "7",
            Code::ResourceExhausted => "8",
            Code::Unimplemented => "12",
            Code::Internal => "13",
            Code::Unavailable => "14",
        })
    }
}

/// `/package.Service/Method` as (service, method), a query left out.
pub fn service_method(path: &str) -> Option<(&str, &str)> {
    let path = path.split('?').next().unwrap_or(path);
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The numeric `grpc-status` in a header map (response headers or trailers).
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Parses `grpc-timeout`: at most 8 digits and a unit (H M S m u n).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (digits, unit) = bytes.split_at_checked(bytes.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a remaining time as `grpc-timeout`, in the finest unit that fits
/// the 8-digit limit, rounding up so the upstream never sees zero too early.
pub fn format_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos().max(1);
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (value, unit) = units
        .iter()
        .map(|(scale, unit)| (nanos.div_ceil(*scale), *unit))
        .find(|(value, _)| *value <= MAX)
        .unwrap_or((MAX, 'H'));
    HeaderValue::try_from(format!("{value}{unit}")).expect("digits and a unit letter")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn grpc_methods_are_read_from_the_path() {
        assert_eq!(
            service_method("/inference.GRPCInferenceService/ModelInfer?x=1"),
            Some(("inference.GRPCInferenceService", "ModelInfer"))
        );
        for bad in ["/", "/svc", "/svc/", "//m", "/a/b/c", "svc/m"] {
            assert_eq!(service_method(bad), None, "{bad}");
        }
    }

    #[test]
    fn timeout_round_trips_within_unit_precision() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_micros(1500),
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(7 * 86400),
        ] {
            let back = parse_timeout(&format_timeout(d)).unwrap();
            assert!(back >= d, "{d:?} -> {back:?}");
            assert!(
                back - d <= d / 1000 + Duration::from_micros(1),
                "{d:?} -> {back:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed_timeouts() {
        for bad in ["", "S", "10", "123456789S", "10x", "-5S", "1.5S", "10 S"] {
            assert_eq!(
                parse_timeout(&HeaderValue::from_static(bad)),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_timeout(&HeaderValue::from_static("99999999H")),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(256))]

        #[test]
        fn grpc_timeout_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let _ = parse_timeout(&value);
            }
        }

        #[test]
        fn grpc_timeout_parses_what_the_spec_allows(n in 0u64..100_000_000, unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
            let value = HeaderValue::try_from(format!("{n}{unit}")).unwrap();
            let expected = match unit {
                'H' => Duration::from_secs(n * 3600),
                'M' => Duration::from_secs(n * 60),
                'S' => Duration::from_secs(n),
                'm' => Duration::from_millis(n),
                'u' => Duration::from_micros(n),
                _ => Duration::from_nanos(n),
            };
            prop_assert_eq!(parse_timeout(&value), Some(expected));
            // Nine digits is one too many.
            let long = HeaderValue::try_from(format!("{}{unit}", n + 100_000_000)).unwrap();
            prop_assert_eq!(parse_timeout(&long), None);
        }

        /// format -> parse never shortens a deadline and loses at most the
        /// precision of the unit chosen (8 digits, so at worst 1 in 10^5 where
        /// the unit steps by 1000).
        #[test]
        fn grpc_timeout_round_trips(nanos in prop_oneof![0u64..10_000_000_000, any::<u64>()]) {
            let d = Duration::from_nanos(nanos);
            let formatted = format_timeout(d);
            let text = formatted.to_str().unwrap();
            prop_assert!(text.len() <= 9, "{}", text);
            let back = parse_timeout(&formatted).expect("what we format, we parse");
            prop_assert!(back >= d, "{:?} -> {} -> {:?}", d, text, back);
            prop_assert!(back - d <= d / 100_000 + Duration::from_nanos(1), "{:?} -> {} -> {:?}", d, text, back);
        }
    }
}
