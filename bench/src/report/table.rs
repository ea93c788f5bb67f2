//! The report as text tables on stdout.

use super::Report;
use super::checks::Range;
use super::per_hop::PerHop;
use crate::results::{Figure, Scenario, Summary};
use crate::targets::ProxyKind;

/// A table column: a measured figure or a per-hop one.
#[derive(Clone, Copy)]
enum Column {
    Measured(Figure),
    PerHop(PerHop),
}

impl Column {
    fn header(self) -> &'static str {
        match self {
            Column::Measured(figure) => figure.label(),
            Column::PerHop(figure) => figure.label(),
        }
    }

    fn of(scenario: Scenario) -> &'static [Column] {
        use Column::{Measured, PerHop as Hop};
        match scenario {
            Scenario::Http1 | Scenario::GrpcUnary => &[
                Measured(Figure::P50Us),
                Measured(Figure::P99Us),
                Measured(Figure::P999Us),
                Hop(PerHop::AddedP50Us),
                Hop(PerHop::AddedP99Us),
                Hop(PerHop::CpuUsPerRequest),
                Measured(Figure::MaxRequestsPerS),
                Hop(PerHop::CpuUsPerRequestAtMax),
                Measured(Figure::ProxyCoreBusyAtMax),
                Measured(Figure::SendLatenessP99Us),
            ],
            Scenario::GrpcStream => &[
                Measured(Figure::StreamMs),
                Measured(Figure::MessagesPerS),
                Hop(PerHop::AddedUsPerStreamMessage),
                Hop(PerHop::CpuNsPerStreamMessage),
            ],
            Scenario::Memory => &[
                Measured(Figure::PssIdleMib),
                Measured(Figure::PssOpenStreamsMib),
                Measured(Figure::PssAfterLoadMib),
            ],
            Scenario::Connections => &[
                Measured(Figure::ConnectionsPerS),
                Measured(Figure::ProxyCoreBusyAtMax),
                Measured(Figure::CpuUsPerConnection),
                Measured(Figure::ConnectionsPerCoreS),
                Measured(Figure::PssOpenConnectionsMib),
                Measured(Figure::KibPerOpenConnection),
            ],
        }
    }
}

/// Background load above which a run's figures are flagged: a tenth of a
/// core is already enough to disturb tail latencies on a 2-core machine.
const NOISY_BACKGROUND_CORES: f64 = 0.1;

pub fn print(report: &Report) {
    print_header(report);
    for &scenario in &report.scenarios {
        print_scenario(report, scenario);
    }
    print_ratios(report);
    print_checks(report);
    if !report.failures.is_empty() {
        println!("\nNot measured:");
        for failure in &report.failures {
            println!("  {failure}");
        }
    }
}

fn print_header(report: &Report) {
    let settings = &report.settings;
    let machine = &report.machine;
    println!(
        "\ngridmesh benchmark, {} ({}), revision {}",
        report.started_at,
        if report.quick { "quick" } else { "full" },
        report.revision.as_deref().unwrap_or("unknown")
    );
    println!(
        "machine: {} x{}, kernel {}; proxy on CPU {}, load generator + upstream on CPU {}; {}",
        machine.cpu_model,
        machine.online_cpus,
        machine.kernel,
        machine.placement.proxy_core,
        machine.placement.load_core,
        if machine.raised_priority {
            "both at nice -10"
        } else {
            "at normal priority (not root)"
        }
    );
    println!(
        "{} round(s); fixed rate {} req/s for {:?} over {} connections/calls; closed loop {:?} over {}; \
         streams of {} x {} B messages",
        settings.rounds,
        settings.rate,
        settings.fixed_rate_duration,
        settings.fixed_rate_concurrency,
        settings.max_throughput_duration,
        settings.max_throughput_concurrency,
        settings.stream_messages,
        settings.stream_message_bytes
    );
    for proxy in &report.proxies {
        match (&proxy.version, &proxy.unavailable) {
            (_, Some(reason)) => println!("  {:<9} UNAVAILABLE: {reason}", proxy.proxy.name()),
            (version, None) => println!(
                "  {:<9} {}",
                proxy.proxy.name(),
                version.as_deref().unwrap_or("version unknown")
            ),
        }
    }
    if report.settings.rounds > 1 {
        println!("Cells: median of the rounds, ± spread (max - min) as % of the median.");
    }
    let busiest = report
        .background_load
        .iter()
        .map(|row| row.cores)
        .fold(0.0, f64::max);
    println!("Other processes kept up to {busiest:.2} cores busy while targets were measured.");
    if busiest > NOISY_BACKGROUND_CORES {
        println!("WARNING: the machine was not quiet; these figures are not representative.");
    }
}

fn print_scenario(report: &Report, scenario: Scenario) {
    let columns = Column::of(scenario);
    let mut header = vec!["target".to_owned()];
    header.extend(columns.iter().map(|column| column.header().to_owned()));
    header.push("errors".to_owned());
    let mut rows = vec![header];
    for target in &report.targets {
        let mut row = vec![target.label.clone()];
        row.extend(columns.iter().map(|&column| {
            let summary = match column {
                Column::Measured(figure) => report.figure(&target.label, scenario, figure),
                Column::PerHop(figure) => report.per_hop(&target.label, scenario, figure),
            };
            summary.map_or_else(|| "-".to_owned(), cell)
        }));
        let errors = report
            .errors
            .iter()
            .find(|row| row.target == target.label && row.scenario == scenario)
            .map_or(0, |row| row.errors.count);
        row.push(errors.to_string());
        rows.push(row);
    }
    println!("\n== {}", scenario.title());
    print_rows(&rows);
    for error in report.errors.iter().filter(|row| row.scenario == scenario) {
        if let Some(first) = &error.errors.first {
            println!("  {} errors, first: {first}", error.target);
        }
    }
}

fn print_ratios(report: &Report) {
    if report.ratios.is_empty() {
        return;
    }
    println!(
        "\n== gridmesh / peer, same hop count (medians; below 1 is better for gridmesh except req/s and msg/s)"
    );
    let mut rows = vec![
        ["scenario", "hops", "figure"]
            .into_iter()
            .map(str::to_owned)
            .chain(
                ProxyKind::PEERS
                    .iter()
                    .map(|peer| format!("vs {}", peer.name())),
            )
            .collect::<Vec<_>>(),
    ];
    let mut keys: Vec<_> = report
        .ratios
        .iter()
        .map(|ratio| (ratio.scenario, ratio.hops, ratio.figure))
        .collect();
    keys.dedup();
    for (scenario, hops, figure) in keys {
        let mut row = vec![
            scenario.title().to_owned(),
            format!("x{hops}"),
            figure.to_owned(),
        ];
        row.extend(ProxyKind::PEERS.iter().map(|&peer| {
            report
                .ratios
                .iter()
                .find(|r| {
                    r.scenario == scenario && r.hops == hops && r.figure == figure && r.peer == peer
                })
                // An added latency at or below zero is noise; a ratio of it means nothing.
                .filter(|r| r.peer_value > 0.0 && r.gridmesh > 0.0)
                .map_or_else(|| "-".to_owned(), |r| format!("{:.2}x", r.ratio))
        }));
        rows.push(row);
    }
    print_rows(&rows);
}

fn print_checks(report: &Report) {
    if report.checks.is_empty() {
        return;
    }
    println!("\n== Targets (rounds' ranges: met or missed only when they do not overlap)");
    let range = |r: Option<Range>| {
        r.map_or_else(
            || "-".to_owned(),
            |r| match r.min == r.max {
                true => number(r.median),
                false => format!(
                    "{} [{}..{}]",
                    number(r.median),
                    number(r.min),
                    number(r.max)
                ),
            },
        )
    };
    for check in &report.checks {
        println!(
            "  {:<12}  {}  (gridmesh {}, limit {})",
            check.verdict.label(),
            check.requirement,
            range(check.gridmesh),
            range(check.limit)
        );
    }
}

fn cell(summary: &Summary) -> String {
    if summary.rounds.len() > 1 {
        format!("{} ±{:.0}%", number(summary.median), summary.spread_pct)
    } else {
        number(summary.median)
    }
}

pub(crate) fn number(value: f64) -> String {
    match value.abs() {
        v if v.is_infinite() => "inf".into(),
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// Left-aligned first column, right-aligned numbers.
pub(crate) fn print_rows(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, text)| {
                if i == 0 {
                    format!("{text:<width$}", width = widths[i])
                } else {
                    format!("{text:>width$}", width = widths[i])
                }
            })
            .collect();
        println!("  {}", line.join("  "));
    }
}
