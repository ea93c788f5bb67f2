//! Route matching and route actions through the real proxy (in-process):
//! authorities, paths, gRPC service/method, header matchers, first match
//! wins, weighted clusters and header mutations.
//!
//! Most tests route to one sample upstream and tell routes apart by a
//! response header each route sets (`x-route`).

use std::collections::HashMap;
use std::net::SocketAddr;

use gridmesh_proto::testing::{EchoRequest, StreamRequest};
use gridmesh_tests::harness::{
    HttpClient, Protocol, endpoints, get, grpc_echo_client, h2c_client, proxy, render, upstream,
    weighted_endpoints, within,
};
use http::{Request, StatusCode};

const CLIENTS: [HttpClient; 2] = [
    HttpClient {
        protocol: Protocol::Http1,
    },
    HttpClient {
        protocol: Protocol::H2c,
    },
];

/// Which route served `authority` + `path` (its `x-route`), or the proxy's
/// error reason prefixed with `!`.
async fn route_of(client: HttpClient, entry: SocketAddr, authority: &str, path: &str) -> String {
    route_of_request(client, entry, get(authority, path)).await
}

async fn route_of_request(
    client: HttpClient,
    entry: SocketAddr,
    req: Request<gridmesh_tests::harness::Body>,
) -> String {
    let reply = client.request(entry, req).await;
    match reply.error() {
        Some(reason) => format!("!{reason}"),
        None => {
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            reply
                .header("x-route")
                .unwrap_or_else(|| panic!("no x-route: {reply:?}"))
                .to_string()
        }
    }
}

/// A route named `name` that sends everything to `up` and tags responses.
fn tagged(name: &str, matcher: &str) -> String {
    format!(
        "{{ name: {name}, match: {matcher}, route: {{ cluster: up }}, \
         responseHeaders: {{ set: [{{ name: x-route, value: {name} }}] }} }}"
    )
}

fn one_cluster(upstream: SocketAddr, route_tables: &str) -> String {
    render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
${tables}
clusters: [{ name: up }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
        &[("tables", &route_tables), ("up", &endpoints(&[upstream]))],
    )
}

// ---------------------------------------------------------------- authority

#[tokio::test]
async fn authority_matching_most_specific_wins() {
    let up = upstream("a").await;
    let vhost = |name: &str, domains: &str| {
        format!(
            "      - {{ name: {name}, domains: {domains}, routes: [{}] }}\n",
            tagged(name, "{}")
        )
    };
    let tables = [
        "  - name: rt\n    virtualHosts:\n".to_string(),
        vhost("exact", r#"["api.example.com", "Other.Example.com"]"#),
        vhost("exact-port", r#"["port.example.com:8080"]"#),
        vhost("suffix", r#"["*.example.com"]"#),
        vhost("longer-suffix", r#"["*.eu.example.com"]"#),
        vhost("prefix", r#"["api.*"]"#),
        vhost("any", r#"["*"]"#),
    ]
    .concat();
    let p = proxy(&one_cluster(up.local_addr(), &tables)).await;
    let cases = [
        ("api.example.com", "exact"),
        ("api.example.com:15001", "exact"),
        // Configured domains are case-insensitive, and so are requests.
        ("other.example.com", "exact"),
        ("API.Example.COM", "exact"),
        ("Api.Example.Com:80", "exact"),
        ("port.example.com:8080", "exact-port"),
        ("port.example.com:9090", "suffix"),
        ("port.example.com", "suffix"),
        ("www.example.com", "suffix"),
        ("WWW.EXAMPLE.COM", "suffix"),
        ("a.b.example.com", "suffix"),
        ("x.eu.example.com", "longer-suffix"),
        // Suffix wildcards beat prefix wildcards.
        ("api.eu.example.com", "longer-suffix"),
        ("api.internal", "prefix"),
        ("API.internal:443", "prefix"),
        // The wildcard needs at least one character.
        ("example.com", "any"),
        ("api.", "any"),
        ("unknown.test", "any"),
        ("127.0.0.1:15001", "any"),
    ];
    for client in CLIENTS {
        for (authority, want) in cases {
            let got = route_of(client, p.addr("in"), authority, "/").await;
            assert_eq!(got, want, "{client:?} authority {authority:?}");
        }
    }
}

#[tokio::test]
async fn no_matching_virtual_host_is_route_not_found() {
    let up = upstream("a").await;
    let tables = format!(
        "  - name: rt\n    virtualHosts:\n      - {{ name: only, domains: [\"only.test\", \"*.only.test\"], routes: [{}] }}\n",
        tagged("only", "{}")
    );
    let p = proxy(&one_cluster(up.local_addr(), &tables)).await;
    for client in CLIENTS {
        for authority in ["other.test", "only.test.evil", "notonly.test", "only.tes"] {
            let got = route_of(client, p.addr("in"), authority, "/").await;
            assert_eq!(got, "!route_not_found", "{client:?} {authority:?}");
        }
        assert_eq!(
            route_of(client, p.addr("in"), "only.test", "/").await,
            "only"
        );
        assert_eq!(
            route_of(client, p.addr("in"), "x.only.test", "/").await,
            "only"
        );
    }
    assert_eq!(up.stats().requests(), 4);
}

// --------------------------------------------------------------------- path

#[tokio::test]
async fn path_exact_prefix_and_anchored_regex() {
    let up = upstream("a").await;
    let routes = [
        tagged("exact", "{ path: /exact }"),
        tagged("regex", r#"{ regex: "/items/[0-9]+" }"#),
        tagged("prefix", "{ prefix: /pre }"),
    ]
    .join(", ");
    let tables = format!(
        "  - name: rt\n    virtualHosts:\n      - {{ name: all, domains: [\"*\"], routes: [{routes}] }}\n"
    );
    let p = proxy(&one_cluster(up.local_addr(), &tables)).await;
    let cases = [
        ("/exact", "exact"),
        ("/exact?query=1", "exact"),
        ("/exact/", "!route_not_found"),
        ("/exactly", "!route_not_found"),
        ("/Exact", "!route_not_found"),
        ("/items/12", "regex"),
        ("/items/12?x=y", "regex"),
        ("/items/12/more", "!route_not_found"),
        ("/x/items/12", "!route_not_found"),
        ("/items/", "!route_not_found"),
        ("/items/abc", "!route_not_found"),
        ("/pre", "prefix"),
        ("/prefix/and/more", "prefix"),
        ("/pr", "!route_not_found"),
        ("/", "!route_not_found"),
    ];
    for client in CLIENTS {
        for (path, want) in cases {
            let got = route_of(client, p.addr("in"), "any.test", path).await;
            assert_eq!(got, want, "{client:?} path {path:?}");
        }
    }
}

// --------------------------------------------------------------------- gRPC

#[tokio::test]
async fn grpc_service_and_method_matching() {
    let unary = upstream("unary").await;
    let echo = upstream("echo").await;
    let plain = upstream("plain").await;
    let yaml = render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - name: unary
            match: { grpc: { service: gridmesh.testing.v1.Echo, method: Unary } }
            route: { cluster: unary }
          - name: other-service
            match: { grpc: { service: gridmesh.testing.v1.Other } }
            route: { cluster: unary }
          - name: echo
            match: { grpc: { service: gridmesh.testing.v1.Echo } }
            route: { cluster: echo }
          - name: plain
            match: { prefix: / }
            route: { cluster: plain }
clusters: [{ name: unary }, { name: echo }, { name: plain }]
endpoints:
  - { cluster: unary, endpoints: ${unary} }
  - { cluster: echo, endpoints: ${echo} }
  - { cluster: plain, endpoints: ${plain} }
"#,
        &[
            ("unary", &endpoints(&[unary.local_addr()])),
            ("echo", &endpoints(&[echo.local_addr()])),
            ("plain", &endpoints(&[plain.local_addr()])),
        ],
    );
    let p = proxy(&yaml).await;
    let mut client = grpc_echo_client(p.addr("in"), "blocks").await;
    let reply = within("unary", client.unary(EchoRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.server, "unary", "service + method route");

    let mut stream = within(
        "server stream",
        client.server_stream(StreamRequest {
            count: 1,
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let reply = within("message", stream.message()).await.unwrap().unwrap();
    assert_eq!(reply.server, "echo", "service-only route");

    let reply = within(
        "client stream",
        client.client_stream(futures_util::stream::iter([EchoRequest::default()])),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(reply.server, "echo");

    // A plain HTTP request to a gRPC path is not a gRPC request.
    let reply = h2c_client()
        .get(p.addr("in"), "blocks", "/gridmesh.testing.v1.Echo/Unary")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.upstream(), Some("plain"));
    assert_eq!(unary.stats().http_requests(), 0);
    assert_eq!(echo.stats().http_requests(), 0);
}

// ------------------------------------------------------------------ headers

#[tokio::test]
async fn header_matchers_and_first_match_wins() {
    let up = upstream("a").await;
    let routes = [
        tagged("exact", r#"{ headers: [{ name: x-tenant, exact: blue }] }"#),
        tagged(
            "prefix",
            r#"{ headers: [{ name: x-tenant, prefix: "green-" }] }"#,
        ),
        tagged(
            "regex",
            r#"{ headers: [{ name: x-tenant, regex: "t[0-9]{3}" }] }"#,
        ),
        tagged(
            "both",
            r#"{ headers: [{ name: x-a, present: true }, { name: x-b, present: true }] }"#,
        ),
        tagged(
            "present",
            r#"{ headers: [{ name: x-debug, present: true }] }"#,
        ),
        tagged(
            "not-canary",
            r#"{ prefix: /inv, headers: [{ name: x-canary, exact: "yes", invert: true }] }"#,
        ),
        tagged(
            "absent",
            r#"{ prefix: /absent, headers: [{ name: x-tenant, present: false }] }"#,
        ),
        // Also matches everything the routes above match: never reached for those.
        tagged("fallback", "{ prefix: / }"),
        tagged("unreachable", "{ prefix: / }"),
    ]
    .join(",\n          ");
    let tables = format!(
        "  - name: rt\n    virtualHosts:\n      - name: all\n        domains: [\"*\"]\n        routes: [\n          {routes}]\n"
    );
    let p = proxy(&one_cluster(up.local_addr(), &tables)).await;
    // (path, request headers, expected route)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("/", &[("x-tenant", "blue")], "exact"),
        ("/", &[("x-tenant", "Blue")], "fallback"),
        ("/", &[("x-tenant", "blue-ish")], "fallback"),
        ("/", &[("x-tenant", "green-1")], "prefix"),
        ("/", &[("x-tenant", "green")], "fallback"),
        ("/", &[("x-tenant", "t123")], "regex"),
        // Anchored: the whole value must match.
        ("/", &[("x-tenant", "t1234")], "fallback"),
        ("/", &[("x-tenant", "at123")], "fallback"),
        ("/", &[("x-a", "1"), ("x-b", "2")], "both"),
        ("/", &[("x-a", "1")], "fallback"),
        ("/", &[("x-debug", "")], "present"),
        ("/", &[("x-debug", "anything")], "present"),
        // First match wins: exact comes before present.
        ("/", &[("x-tenant", "blue"), ("x-debug", "1")], "exact"),
        ("/inv", &[], "not-canary"),
        ("/inv", &[("x-canary", "no")], "not-canary"),
        ("/inv", &[("x-canary", "yes")], "fallback"),
        ("/absent", &[], "absent"),
        ("/absent", &[("x-tenant", "red")], "fallback"),
        ("/", &[], "fallback"),
    ];
    for client in CLIENTS {
        for (path, headers, want) in cases {
            let mut req = get("any.test", path);
            for (name, value) in *headers {
                req.headers_mut().append(*name, value.parse().unwrap());
            }
            let got = route_of_request(client, p.addr("in"), req).await;
            assert_eq!(&got, want, "{client:?} {path} {headers:?}");
        }
    }
}

// ---------------------------------------------------------------- weighting

#[tokio::test]
async fn weighted_clusters_split_traffic_by_weight() {
    const REQUESTS: usize = 1000;
    let heavy = upstream("heavy").await;
    let light = upstream("light").await;
    let never = upstream("never").await;
    let yaml = render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - name: split
            route:
              weightedClusters:
                clusters: [{ name: heavy, weight: 3 }, { name: light, weight: 1 }, { name: never, weight: 0 }]
clusters: [{ name: heavy }, { name: light }, { name: never }]
endpoints:
  - { cluster: heavy, endpoints: ${heavy} }
  - { cluster: light, endpoints: ${light} }
  - { cluster: never, endpoints: ${never} }
"#,
        &[
            ("heavy", &weighted_endpoints(&[(heavy.local_addr(), 1)])),
            ("light", &endpoints(&[light.local_addr()])),
            ("never", &endpoints(&[never.local_addr()])),
        ],
    );
    let p = proxy(&yaml).await;
    // One HTTP/2 connection, many concurrent streams: fast, and the split is
    // per request, not per connection.
    let conn = h2c_client().connect(p.addr("in")).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for batch in 0..REQUESTS / 100 {
        let replies = futures_util::future::join_all((0..100).map(|_| {
            let mut stream = conn.stream();
            async move {
                let rsp = stream.send(get("any.test", "/echo")).await.unwrap();
                rsp.headers()
                    .get("x-upstream")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            }
        }));
        for name in within(&format!("batch {batch}"), replies).await {
            *counts.entry(name).or_default() += 1;
        }
    }
    let heavy_count = counts.get("heavy").copied().unwrap_or(0);
    let light_count = counts.get("light").copied().unwrap_or(0);
    assert_eq!(
        counts.get("never"),
        None,
        "weight 0 got traffic: {counts:?}"
    );
    assert_eq!(heavy_count + light_count, REQUESTS);
    // Expected 750 / 250; binomial sd ~13.7, so +-70 is over 5 sd.
    assert!(
        (680..=820).contains(&heavy_count),
        "split off 3:1 — {counts:?}"
    );
    assert_eq!(never.stats().requests(), 0);
}

// -------------------------------------------------------- header mutations

#[tokio::test]
async fn request_and_response_header_mutations() {
    let up = upstream("a").await;
    let tables = r#"
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - name: mutate
            route: { cluster: up }
            requestHeaders:
              set:
                - { name: x-added, value: by-proxy }
                - { name: x-replaced, value: new }
                - { name: x-appended, value: second, append: true }
              remove: [x-removed]
            responseHeaders:
              set:
                - { name: x-response-added, value: "yes" }
                - { name: x-upstream, value: rewritten }
                - { name: x-echo-x-appended, value: third, append: true }
              remove: [x-echo-x-tenant]
"#;
    let p = proxy(&one_cluster(up.local_addr(), tables)).await;
    for client in CLIENTS {
        let mut req = get("any.test", "/echo");
        let h = req.headers_mut();
        h.insert("x-replaced", "old".parse().unwrap());
        h.insert("x-appended", "first".parse().unwrap());
        h.insert("x-removed", "gone".parse().unwrap());
        h.insert("x-tenant", "blue".parse().unwrap());
        let reply = client.request(p.addr("in"), req).await;
        assert_eq!(reply.status, StatusCode::OK);
        // What the upstream saw, as it echoes `x-*` request headers back.
        assert_eq!(
            reply.header_all("x-echo-x-added"),
            ["by-proxy"],
            "{client:?}"
        );
        assert_eq!(reply.header_all("x-echo-x-replaced"), ["new"], "{client:?}");
        assert_eq!(reply.header("x-echo-x-removed"), None, "{client:?}");
        // Request append kept the client's value; the response append added one.
        assert_eq!(
            reply.header_all("x-echo-x-appended"),
            ["first", "second", "third"],
            "{client:?}"
        );
        // Response mutations.
        assert_eq!(reply.header("x-response-added"), Some("yes"));
        assert_eq!(reply.header_all("x-upstream"), ["rewritten"]);
        assert_eq!(reply.header("x-echo-x-tenant"), None, "{client:?}");
    }
}
