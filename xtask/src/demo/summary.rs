//! The demo's printed summary: per protocol, how many requests succeeded,
//! their latency and how they spread over the block instances; then what the
//! sidecars' admin servers say, and how every process stopped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Result, bail};
use gridmesh_tests::process::ProxyProcess;
use gridmesh_tests::prometheus;
use serde_json::Value;

use super::inference::InferenceReport;
use super::traffic::{Protocol, Tally};

/// Lines of an admin page shown in the summary.
const ADMIN_PAGE_LINES: usize = 10;
/// Lines of a sidecar's own output shown when requests failed.
const RECENT_OUTPUT_LINES: usize = 20;

/// Excerpts of the sidecars' admin pages, fetched while the mesh still runs.
pub struct AdminViews {
    /// Titled excerpt, or why it could not be fetched.
    excerpts: Vec<(String, Result<Vec<String>>)>,
}

impl AdminViews {
    /// The client sidecar's `/clusters` (the one that balances) and every
    /// sidecar's request metrics.
    pub async fn fetch(sidecars: &[ProxyProcess]) -> AdminViews {
        let mut excerpts = Vec::new();
        if let Some(client) = sidecars.last() {
            let clusters = admin_page(client, "/clusters")
                .await
                .map(|body| json_as_lines(&body));
            excerpts.push((format!("{} /clusters", client.name()), clusters));
        }
        for sidecar in sidecars {
            let metrics = admin_excerpt(sidecar, "/metrics", is_nonzero_counter).await;
            excerpts.push((
                format!("{} /metrics (counters above zero)", sidecar.name()),
                metrics,
            ));
        }
        AdminViews { excerpts }
    }
}

async fn admin_page(sidecar: &ProxyProcess, path: &str) -> Result<String> {
    let response = sidecar.admin_get(path).await?;
    if response.status != 200 {
        bail!("GET {path} answered {}", response.status);
    }
    Ok(response.body)
}

async fn admin_excerpt(
    sidecar: &ProxyProcess,
    path: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let body = admin_page(sidecar, path).await?;
    Ok(body
        .lines()
        .filter(|line| !line.trim().is_empty() && keep(line))
        .take(ADMIN_PAGE_LINES)
        .map(str::to_owned)
        .collect())
}

/// A JSON admin page as indented `key=value` lines, one per object, nested
/// objects below their parent; the raw text if it is not JSON.
fn json_as_lines(body: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return body
            .lines()
            .take(ADMIN_PAGE_LINES)
            .map(str::to_owned)
            .collect();
    };
    let mut lines = Vec::new();
    describe_json(&value, 0, &mut lines);
    lines
}

fn describe_json(value: &Value, indent: usize, lines: &mut Vec<String>) {
    match value {
        Value::Array(items) => items
            .iter()
            .for_each(|item| describe_json(item, indent, lines)),
        Value::Object(fields) => {
            // Identifying fields first, then the rest in key order.
            let (identity, rest): (Vec<_>, Vec<_>) = fields
                .iter()
                .filter(|(_, field)| !field.is_array() && !field.is_object())
                .partition(|(key, _)| ["name", "address"].contains(&key.as_str()));
            let scalars: Vec<String> = identity
                .into_iter()
                .chain(rest)
                .map(|(key, field)| format!("{key}={}", scalar_text(field)))
                .collect();
            lines.push(format!("{:indent$}{}", "", scalars.join(" ")));
            for (_, nested) in fields.iter().filter(|(_, f)| f.is_array() || f.is_object()) {
                describe_json(nested, indent + 2, lines);
            }
        }
        scalar => lines.push(format!("{:indent$}{}", "", scalar_text(scalar))),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A Prometheus counter sample (`..._total`) that has counted something;
/// zeros and histogram series would bury the interesting lines.
fn is_nonzero_counter(line: &str) -> bool {
    matches!(
        prometheus::parse(line).as_deref(),
        Ok([sample]) if sample.name.ends_with("_total") && sample.value != 0.0
    )
}

pub struct Report<'a> {
    pub outbound: SocketAddr,
    pub requests_per_protocol: usize,
    pub concurrency: usize,
    pub tallies: &'a [(Protocol, Tally)],
    pub inference: &'a InferenceReport,
    pub admin_views: &'a AdminViews,
    pub stopped: &'a [(String, Result<ExitStatus>)],
}

pub fn print(report: &Report) {
    println!();
    println!(
        "gridmesh demo: {} requests per protocol, {} at a time, sent to the client sidecar at {} for authority \"echo\"",
        report.requests_per_protocol, report.concurrency, report.outbound
    );
    print_table(report.tallies);
    print_failures(report.tallies);
    print_inference(report.inference);
    for (title, excerpt) in &report.admin_views.excerpts {
        println!("\n{title}:");
        match excerpt {
            Ok(lines) if lines.is_empty() => println!("  (nothing)"),
            Ok(lines) => lines.iter().for_each(|line| println!("  {line}")),
            Err(error) => println!("  unavailable: {error:#}"),
        }
    }
    println!("\nshutdown (SIGTERM):");
    for (name, result) in report.stopped {
        match result {
            Ok(status) if status.success() => println!("  {name}: stopped cleanly"),
            Ok(status) => println!("  {name}: exited with {status}"),
            Err(error) => println!("  {name}: {error:#}"),
        }
    }
    let tallies = report
        .tallies
        .iter()
        .map(|(_, tally)| tally)
        .chain([&report.inference.tally]);
    let (ok, failed) = tallies.fold((0, 0), |(ok, failed), tally| {
        (ok + tally.succeeded() as u64, failed + tally.failed())
    });
    println!("\nrequests: {ok} ok, {failed} failed");
}

fn print_inference(inference: &InferenceReport) {
    let tally = &inference.tally;
    println!(
        "\nKServe v2 ModelInfer for \"classifier\" (client sidecar -> classifier sidecar -> gridmesh-block):\n  \
         {} ok, {} failed, p50 {}, p99 {}; every output matched PyTorch's",
        tally.succeeded(),
        tally.failed(),
        format_latency(tally.latency_quantile(0.50)),
        format_latency(tally.latency_quantile(0.99)),
    );
    for (model, served) in &tally.served_by {
        println!("  answered by {model}: {served}");
    }
    for (reason, count) in &tally.failures {
        println!("  failed {count} x {reason}");
    }
    for (model, requests, forwards) in &inference.batches {
        let mean = if *forwards > 0 {
            *requests as f64 / *forwards as f64
        } else {
            0.0
        };
        println!(
            "  {model}: {requests} requests in {forwards} forwards (dynamic batching: {mean:.1} requests per forward)"
        );
    }
    match &inference.load_report {
        Some(report) => {
            println!("  load report on the last response (endpoint-load-metrics): {report}")
        }
        None => println!("  no response carried a load report (endpoint-load-metrics)"),
    }
}

fn print_table(tallies: &[(Protocol, Tally)]) {
    let servers: BTreeSet<&str> = tallies
        .iter()
        .flat_map(|(_, tally)| tally.served_by.keys().map(String::as_str))
        .collect();
    let mut header = format!(
        "\n  {:<20} {:>6} {:>7} {:>9} {:>9}",
        "protocol", "ok", "failed", "p50", "p99"
    );
    for server in &servers {
        header.push_str(&format!(" {server:>9}"));
    }
    println!("{header}");
    for (protocol, tally) in tallies {
        let mut row = format!(
            "  {:<20} {:>6} {:>7} {:>9} {:>9}",
            protocol.label(),
            tally.succeeded(),
            tally.failed(),
            format_latency(tally.latency_quantile(0.50)),
            format_latency(tally.latency_quantile(0.99)),
        );
        for server in &servers {
            let served = tally.served_by.get(*server).copied().unwrap_or(0);
            row.push_str(&format!(" {served:>9}"));
        }
        println!("{row}");
    }
    if !servers.is_empty() {
        println!("  (the last columns count the answers from each block instance)");
    }
}

fn format_latency(latency: Option<Duration>) -> String {
    match latency {
        Some(latency) => format!("{:.2}ms", latency.as_secs_f64() * 1000.0),
        None => "-".into(),
    }
}

fn print_failures(tallies: &[(Protocol, Tally)]) {
    for (protocol, tally) in tallies.iter().filter(|(_, tally)| tally.failed() > 0) {
        println!("\n{} failures:", protocol.label());
        for (reason, count) in &tally.failures {
            println!("  {count} x {reason}");
        }
    }
}

/// The last lines each sidecar logged, which usually say why requests failed.
pub fn print_recent_output(sidecars: &[ProxyProcess]) {
    for sidecar in sidecars {
        let output = sidecar.output();
        let lines: Vec<&str> = output.lines().collect();
        let recent = &lines[lines.len().saturating_sub(RECENT_OUTPUT_LINES)..];
        println!("\n{} output (last {} lines):", sidecar.name(), recent.len());
        recent.iter().for_each(|line| println!("  {line}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_counters_above_zero_are_shown() {
        let metrics = "\
# HELP gridmesh_upstream_requests_total Requests sent to a cluster.
# TYPE gridmesh_upstream_requests_total counter
gridmesh_upstream_requests_total{cluster=\"echo-block\"} 1200
gridmesh_upstream_retries_total{cluster=\"echo-block\"} 0
gridmesh_upstream_duration_seconds_bucket{cluster=\"echo-block\",le=\"0.001\"} 17
gridmesh_upstream_connections_active{cluster=\"echo-block\"} 3
";
        let shown: Vec<&str> = metrics
            .lines()
            .filter(|line| is_nonzero_counter(line))
            .collect();
        assert_eq!(
            shown,
            ["gridmesh_upstream_requests_total{cluster=\"echo-block\"} 1200"]
        );
    }

    #[test]
    fn json_pages_become_one_line_per_object() {
        let clusters = r#"[{"lbPolicy":"PEAK_EWMA","name":"echo-block","endpoints":[
            {"weight":1,"address":"127.0.0.1:15006","requests":600},
            {"weight":1,"address":"127.0.0.1:15106","requests":600}]}]"#;
        assert_eq!(
            json_as_lines(clusters),
            [
                "name=echo-block lbPolicy=PEAK_EWMA",
                "  address=127.0.0.1:15006 requests=600 weight=1",
                "  address=127.0.0.1:15106 requests=600 weight=1",
            ]
        );
        assert_eq!(json_as_lines("not json\n"), ["not json"]);
    }
}
