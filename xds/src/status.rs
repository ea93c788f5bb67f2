//! The control plane's status as `GET /status` serves it, and as
//! `gridmesh-control status` prints it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::PoisonError;

use gridmesh_proto::resource::Kind;
use serde::{Deserialize, Serialize};

use crate::Shared;
use crate::clients::{ClientView, Protocol, TypeView, timestamp};
use crate::source::FileProblem;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub config: ConfigView,
    pub clients: Vec<ClientView>,
}

/// The served config, and the latest change that was rejected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigView {
    pub version: String,
    pub files: Vec<String>,
    pub loaded_at: String,
    /// Resources served, by kind.
    pub resources: BTreeMap<String, usize>,
    /// Set while the directory holds a change that was rejected.
    pub last_error: Option<ConfigError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigError {
    pub at: String,
    pub problems: Vec<FileProblem>,
}

pub(crate) fn view(shared: &Shared) -> StatusView {
    let snapshot = shared.snapshots.borrow().clone();
    StatusView {
        config: ConfigView {
            version: snapshot.version.clone(),
            files: snapshot.files.clone(),
            loaded_at: timestamp(snapshot.loaded_at),
            resources: Kind::PUSH_ORDER
                .iter()
                .map(|k| (k.label().to_string(), snapshot.resources(*k).entries.len()))
                .collect(),
            last_error: shared
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        },
        clients: shared.clients.list(),
    }
}

/// A readable summary: the config on top, then one row per client and type.
pub fn render(status: &StatusView) -> String {
    let mut out = String::new();
    let config = &status.config;
    let _ = writeln!(
        out,
        "config version {} loaded {} from {} file(s): {}",
        config.version,
        config.loaded_at,
        config.files.len(),
        config
            .resources
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match &config.last_error {
        None => out.push_str("last config error: none\n"),
        Some(error) => {
            let _ = writeln!(
                out,
                "last config error ({}), not served; the version above still is:",
                error.at
            );
            for p in &error.problems {
                let _ = writeln!(out, "  {p}");
            }
        }
    }
    out.push('\n');
    if status.clients.is_empty() {
        out.push_str("no clients connected\n");
        return out;
    }
    let mut rows = vec![
        [
            "NODE",
            "PROTOCOL",
            "TYPE",
            "SUBSCRIBED",
            "ACKED",
            "PENDING",
            "NACK",
        ]
        .map(String::from),
    ];
    for client in &status.clients {
        let node = if client.node_id.is_empty() {
            format!("(stream {})", client.stream)
        } else {
            client.node_id.clone()
        };
        for t in &client.types {
            rows.push([
                node.clone(),
                client.protocol.label().to_string(),
                t.kind.clone(),
                subscribed(t),
                acked(client.protocol, t),
                t.pending_nonce.clone().unwrap_or_else(|| "-".into()),
                nack(t),
            ]);
        }
        for url in &client.unknown_types {
            rows.push([
                node.clone(),
                client.protocol.label().to_string(),
                url.clone(),
                "unknown type, ignored".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    let mut widths = [0; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn subscribed(t: &TypeView) -> String {
    let mut parts = Vec::new();
    if t.subscribed.wildcard {
        parts.push("*".to_string());
    }
    parts.extend(t.subscribed.names.iter().cloned());
    let hidden = t.subscribed.count.saturating_sub(t.subscribed.names.len());
    if hidden > 0 {
        parts.push(format!("... ({hidden} more)"));
    }
    if parts.is_empty() {
        "(nothing)".into()
    } else {
        parts.join(",")
    }
}

fn acked(protocol: Protocol, t: &TypeView) -> String {
    match protocol {
        Protocol::Sotw => t.acked_version.clone().unwrap_or_else(|| "-".into()),
        Protocol::Delta => format!(
            "{}/{} held",
            t.acked.unwrap_or_default(),
            t.held.unwrap_or_default()
        ),
    }
}

fn nack(t: &TypeView) -> String {
    match &t.last_nack {
        Some(n) if t.rejected => format!("rejected {}: {}", n.nonce, n.message),
        _ => "-".into(),
    }
}
