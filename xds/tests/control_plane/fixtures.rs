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

/// `clusters` clusters `c-0`.. with `per_cluster` endpoints each, and
/// cluster `big` with `big` endpoints: an Endpoints type far larger than
/// one delta response may carry.
pub fn many_endpoints(clusters: usize, per_cluster: usize, big: usize) -> String {
    let mut yaml = String::from("clusters:\n  - name: big\n");
    for c in 0..clusters {
        yaml.push_str(&format!("  - name: c-{c}\n"));
    }
    yaml.push_str("endpoints:\n");
    let mut endpoints = |name: &str, n: usize, net: usize| {
        yaml.push_str(&format!("  - cluster: {name}\n    endpoints:\n"));
        for e in 0..n {
            yaml.push_str(&format!(
                "      - address: 10.{net}.{}.{}:8080\n",
                e / 250,
                e % 250 + 1
            ));
        }
    };
    endpoints("big", big, 250);
    for c in 0..clusters {
        endpoints(&format!("c-{c}"), per_cluster, c);
    }
    yaml
}
