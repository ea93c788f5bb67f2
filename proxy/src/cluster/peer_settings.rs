//! How many streams an HTTP/2 upstream lets this proxy open at once: the
//! peer's SETTINGS_MAX_CONCURRENT_STREAMS, read off the connection's bytes
//! on their way to hyper, which does not expose it. Without it, requests
//! beyond the peer's limit would queue invisibly inside the HTTP/2 client
//! instead of going out on another connection.
//!
//! A new connection is used once the peer's first SETTINGS have arrived
//! (the first frame a server sends, one round trip after connecting):
//! streams opened before would be counted against no limit, and a server
//! refuses those beyond its own.
//!
//! Only frame headers are read, and the payload of SETTINGS frames; every
//! other payload is skipped over. Frames may be split across reads at any
//! byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::Notify;

use crate::transport::{Observed, ReadObserver};

const FRAME_HEADER_LEN: usize = 9;
const SETTINGS_FRAME: u8 = 0x4;
const ACK_FLAG: u8 = 0x1;
const SETTING_LEN: usize = 6;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// The peer's stream limit as last announced; unlimited if its SETTINGS
/// leave it out (RFC 9113 section 6.5.2).
#[derive(Debug, Clone)]
pub struct StreamLimit(Arc<Announced>);

#[derive(Debug)]
struct Announced {
    limit: AtomicU32,
    /// The first SETTINGS frame has been read, or the connection ended.
    settled: AtomicBool,
    ended_first: AtomicBool,
    settle: Notify,
}

/// The connection ended before the peer sent its SETTINGS.
#[derive(Debug)]
pub struct NoSettings;

impl StreamLimit {
    pub fn get(&self) -> u32 {
        self.0.limit.load(Ordering::Relaxed)
    }

    /// Waits for the peer's first SETTINGS.
    pub async fn announced(&self) -> Result<(), NoSettings> {
        loop {
            let settled = self.0.settle.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.0.settled.load(Ordering::Acquire) {
                return match self.0.ended_first.load(Ordering::Relaxed) {
                    true => Err(NoSettings),
                    false => Ok(()),
                };
            }
            settled.await;
        }
    }

    fn settle(&self, ended: bool) {
        if !self.0.settled.load(Ordering::Relaxed) {
            self.0.ended_first.store(ended, Ordering::Relaxed);
            self.0.settled.store(true, Ordering::Release);
            self.0.settle.notify_waiters();
        }
    }
}

/// An upstream connection whose incoming bytes are scanned for the peer's
/// SETTINGS.
pub type WatchSettings<T> = Observed<T, SettingsWatch>;

/// `io`, and the stream limit its peer announces.
pub fn watch_settings<T>(io: T) -> (WatchSettings<T>, StreamLimit) {
    let limit = StreamLimit(Arc::new(Announced {
        limit: AtomicU32::new(u32::MAX),
        settled: AtomicBool::new(false),
        ended_first: AtomicBool::new(false),
        settle: Notify::new(),
    }));
    let watch = SettingsWatch {
        scanner: Scanner::default(),
        limit: limit.clone(),
    };
    (Observed::new(io, watch), limit)
}

pub struct SettingsWatch {
    scanner: Scanner,
    limit: StreamLimit,
}

impl ReadObserver for SettingsWatch {
    fn read(&mut self, bytes: &[u8]) {
        let limit = &self.limit;
        self.scanner.scan(bytes, |seen| match seen {
            Seen::Setting(MAX_CONCURRENT_STREAMS, value) => {
                limit.0.limit.store(value, Ordering::Relaxed);
            }
            Seen::Setting(..) => {}
            Seen::SettingsEnd => limit.settle(false),
        });
    }

    fn ended(&mut self) {
        self.limit.settle(true);
    }
}

/// What the scanner reports.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Setting(u16, u32),
    /// A SETTINGS frame (not an acknowledgement) has been read to its end.
    SettingsEnd,
}

/// Where in the frame stream the next byte falls.
#[derive(Debug)]
enum Scanner {
    Header {
        bytes: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    Payload {
        left: usize,
        settings: Option<Setting>,
    },
}

/// A SETTINGS entry being read: 2 bytes of identifier, 4 of value.
#[derive(Debug, Default)]
struct Setting {
    bytes: [u8; SETTING_LEN],
    have: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::Header {
            bytes: [0; FRAME_HEADER_LEN],
            have: 0,
        }
    }
}

impl Scanner {
    fn scan(&mut self, mut input: &[u8], mut report: impl FnMut(Seen)) {
        while !input.is_empty() {
            match self {
                Scanner::Header { bytes, have } => {
                    let take = (FRAME_HEADER_LEN - *have).min(input.len());
                    bytes[*have..*have + take].copy_from_slice(&input[..take]);
                    *have += take;
                    input = &input[take..];
                    if *have == FRAME_HEADER_LEN {
                        let left = usize::from(bytes[0]) << 16
                            | usize::from(bytes[1]) << 8
                            | usize::from(bytes[2]);
                        let is_settings = bytes[3] == SETTINGS_FRAME && bytes[4] & ACK_FLAG == 0;
                        if is_settings && left == 0 {
                            report(Seen::SettingsEnd);
                        }
                        *self = match left {
                            0 => Scanner::default(),
                            left => Scanner::Payload {
                                left,
                                settings: is_settings.then(Setting::default),
                            },
                        };
                    }
                }
                Scanner::Payload { left, settings } => {
                    let take = (*left).min(input.len());
                    if let Some(setting) = settings {
                        for &byte in &input[..take] {
                            setting.bytes[setting.have] = byte;
                            setting.have += 1;
                            if setting.have == SETTING_LEN {
                                let b = setting.bytes;
                                let id = u16::from_be_bytes([b[0], b[1]]);
                                let value = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
                                report(Seen::Setting(id, value));
                                setting.have = 0;
                            }
                        }
                    }
                    *left -= take;
                    input = &input[take..];
                    if *left == 0 {
                        if settings.is_some() {
                            report(Seen::SettingsEnd);
                        }
                        *self = Scanner::default();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn setting(id: u16, value: u32) -> Vec<u8> {
        let mut s = id.to_be_bytes().to_vec();
        s.extend_from_slice(&value.to_be_bytes());
        s
    }

    /// A DATA frame whose payload looks like SETTINGS, an empty frame, a
    /// SETTINGS ACK, then SETTINGS with two entries and an empty SETTINGS:
    /// only the SETTINGS frames count, however the bytes are split.
    #[test]
    fn settings_are_read_across_any_split() {
        let mut stream = frame(0x0, 0, &setting(MAX_CONCURRENT_STREAMS, 1));
        stream.extend(frame(0x8, 0, &[]));
        stream.extend(frame(SETTINGS_FRAME, ACK_FLAG, &[]));
        let mut entries = setting(0x4, 65_535);
        entries.extend(setting(MAX_CONCURRENT_STREAMS, 2));
        stream.extend(frame(SETTINGS_FRAME, 0, &entries));
        stream.extend(frame(0x1, 0x4, &[0x88]));
        stream.extend(frame(SETTINGS_FRAME, 0, &[]));
        for chunk in 1..=stream.len() {
            let mut scanner = Scanner::default();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                scanner.scan(piece, |event| seen.push(event));
            }
            assert_eq!(
                seen,
                [
                    Seen::Setting(0x4, 65_535),
                    Seen::Setting(MAX_CONCURRENT_STREAMS, 2),
                    Seen::SettingsEnd,
                    Seen::SettingsEnd
                ],
                "in reads of {chunk} bytes"
            );
            assert!(matches!(scanner, Scanner::Header { have: 0, .. }));
        }
    }
}
