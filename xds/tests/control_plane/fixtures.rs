//! Config files the tests serve and change.

/// Clusters `a` and `b` with their endpoints.
pub const CLUSTERS: &str = "\
clusters:
  - name: a
  - name: b
endpoints:
  - cluster: a
    endpoints: [{ address: 10.0.0.1:8080 }]
  - cluster: b
    endpoints: [{ address: 10.0.0.2:8080 }]
";

/// Listener `outbound` with route table `outbound`, routing to `cluster`.
pub fn routes(cluster: &str) -> String {
    format!(
        "\
listeners:
  - name: outbound
    address: 0.0.0.0:15001
    direction: OUTBOUND
    routeTable: outbound
routeTables:
  - name: outbound
    virtualHosts:
      - name: all
        domains: [\"*\"]
        routes:
          - name: default
            match: {{ prefix: / }}
            route: {{ cluster: {cluster} }}
"
    )
}

/// Both files: two clusters, one listener, one route table.
pub fn base() -> Vec<(&'static str, String)> {
    vec![
        ("clusters.yaml", CLUSTERS.to_string()),
        ("routes.yaml", routes("a")),
    ]
}

pub fn as_refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(n, t)| (*n, t.as_str())).collect()
}

/// `CLUSTERS` with cluster `a`'s endpoint moved to another address.
pub fn clusters_with_a_at(address: &str) -> String {
    CLUSTERS.replace("10.0.0.1:8080", address)
}

/// `CLUSTERS` with cluster `name` given a connect timeout (a new version
/// of that cluster only).
pub fn clusters_with_timeout(name: &str, timeout: &str) -> String {
    CLUSTERS.replace(
        &format!("  - name: {name}\n"),
        &format!("  - name: {name}\n    connectTimeout: {timeout}\n"),
    )
}
