//! Property tests of the bootstrap validator.
//!
//! Whatever a bootstrap holds (random names, addresses, regexes, header
//! names, weights, durations with negative or out-of-range parts, enum
//! numbers no variant has), validation must not panic, and it either builds
//! a snapshot or explains itself with problems that each name a resource and
//! a field. Known-bad perturbations of a good bootstrap are rejected with the
//! exact field they broke.

use gridmesh_proto::config::{
    self as pb, Bootstrap, header_match, route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use proptest::prelude::*;

use gridmesh_proto::resource::Kind;

use super::{ConfigError, ResourceAt, build_snapshot, load_str, parse_bootstrap, validate_served};

type PbDuration = pbjson_types::Duration;

/// Names drawn mostly from a small pool, so that references between
/// resources (route -> cluster, listener -> route table) sometimes resolve
/// and sometimes collide, plus arbitrary text.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", ""]).prop_map(String::from),
        1 => ".{0,12}",
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u16..).prop_map(|p| format!("127.0.0.1:{p}")),
        2 => prop::sample::select(vec![
            "127.0.0.1:0", "0.0.0.0:15001", "[::1]:8080", "[::]:80", "localhost:80",
            "block-a.blocks.svc:9000", "127.0.0.1", ":80", "host:0", "host:99999",
            "-bad-.example:80", "a..b:80", "", "127.0.0.1:15000",
        ])
        .prop_map(String::from),
        1 => ".{0,24}",
    ]
}

/// Durations as the wire allows them: any seconds, any nanos (including
/// out of the proto's documented range and with inconsistent signs).
fn duration() -> impl Strategy<Value = Option<PbDuration>> {
    let seconds = prop_oneof![3 => -2i64..120, 1 => any::<i64>()];
    let nanos = prop_oneof![3 => 0i32..1_000_000_000, 1 => any::<i32>()];
    proptest::option::weighted(0.6, (seconds, nanos))
        .prop_map(|d| d.map(|(seconds, nanos)| PbDuration { seconds, nanos }))
}

fn enum_number(variants: i32) -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..variants, 1 => any::<i32>()]
}

fn small_u32() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 0u32..20, 1 => any::<u32>()]
}

fn regex_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "/v1/.*", "[a-z]+", "(", "a{99999}", "\\", "(?P<x>.)", ".*"
        ])
        .prop_map(String::from),
        ".{0,10}",
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "x-session",
            "X-Upper",
            "content-type",
            "bad header",
            "",
            "host"
        ])
        .prop_map(String::from),
        ".{0,10}",
    ]
}

fn header_match() -> impl Strategy<Value = pb::HeaderMatch> {
    let matcher = prop_oneof![
        Just(None),
        ".{0,6}".prop_map(|v| Some(header_match::Matcher::Exact(v))),
        ".{0,6}".prop_map(|v| Some(header_match::Matcher::Prefix(v))),
        regex_text().prop_map(|v| Some(header_match::Matcher::Regex(v))),
        any::<bool>().prop_map(|v| Some(header_match::Matcher::Present(v))),
    ];
    (header_name(), matcher, any::<bool>()).prop_map(|(name, matcher, invert)| pb::HeaderMatch {
        name,
        matcher,
        invert,
    })
}

fn route_match() -> impl Strategy<Value = Option<pb::RouteMatch>> {
    let path = prop_oneof![
        Just(None),
        ".{0,8}".prop_map(|p| Some(PathSpecifier::Prefix(p))),
        ".{0,8}".prop_map(|p| Some(PathSpecifier::Path(p))),
        regex_text().prop_map(|p| Some(PathSpecifier::Regex(p))),
    ];
    let grpc = proptest::option::of(
        (name(), name()).prop_map(|(service, method)| pb::GrpcMatch { service, method }),
    );
    proptest::option::of(
        (path, grpc, prop::collection::vec(header_match(), 0..3)).prop_map(
            |(path_specifier, grpc, headers)| pb::RouteMatch {
                path_specifier,
                grpc,
                headers,
            },
        ),
    )
}

fn retry_policy() -> impl Strategy<Value = Option<pb::RetryPolicy>> {
    proptest::option::of(
        (
            small_u32(),
            prop::collection::vec(enum_number(5), 0..4),
            small_u32(),
            duration(),
        )
            .prop_map(|(max_retries, retry_on, max_replay_body_bytes, backoff)| {
                pb::RetryPolicy {
                    max_retries,
                    retry_on,
                    max_replay_body_bytes,
                    backoff,
                }
            }),
    )
}

fn route_action() -> impl Strategy<Value = Option<pb::RouteAction>> {
    let target = prop_oneof![
        Just(None),
        name().prop_map(|n| Some(ClusterSpecifier::Cluster(n))),
        prop::collection::vec(
            (name(), small_u32()).prop_map(|(name, weight)| pb::ClusterWeight { name, weight }),
            0..4
        )
        .prop_map(|clusters| Some(ClusterSpecifier::WeightedClusters(
            pb::WeightedClusters { clusters }
        ))),
    ];
    let timeouts = proptest::option::of((duration(), duration(), duration()).prop_map(
        |(response_headers, idle, max_duration)| pb::Timeouts {
            response_headers,
            idle,
            max_duration,
        },
    ));
    proptest::option::weighted(
        0.9,
        (target, timeouts, retry_policy()).prop_map(
            |(cluster_specifier, timeouts, retry_policy)| pb::RouteAction {
                cluster_specifier,
                timeouts,
                retry_policy,
            },
        ),
    )
}

fn header_mutation() -> impl Strategy<Value = Option<pb::HeaderMutation>> {
    let value = (header_name(), ".{0,8}", any::<bool>()).prop_map(|(name, value, append)| {
        pb::HeaderValue {
            name,
            value,
            append,
        }
    });
    proptest::option::of(
        (
            prop::collection::vec(value, 0..3),
            prop::collection::vec(header_name(), 0..2),
        )
            .prop_map(|(set, remove)| pb::HeaderMutation { set, remove }),
    )
}

fn route() -> impl Strategy<Value = pb::Route> {
    (
        name(),
        route_match(),
        route_action(),
        header_mutation(),
        header_mutation(),
    )
        .prop_map(
            |(name, r#match, route, request_headers, response_headers)| pb::Route {
                name,
                r#match,
                route,
                request_headers,
                response_headers,
            },
        )
}

fn route_table() -> impl Strategy<Value = pb::RouteTable> {
    let domain = prop_oneof![
        prop::sample::select(vec!["*", "echo", "*.svc", "api.*", "a*b", "", "ECHO"])
            .prop_map(String::from),
        ".{0,8}",
    ];
    let virtual_host = (
        name(),
        prop::collection::vec(domain, 0..3),
        prop::collection::vec(route(), 0..3),
    )
        .prop_map(|(name, domains, routes)| pb::VirtualHost {
            name,
            domains,
            routes,
        });
    (name(), prop::collection::vec(virtual_host, 0..3)).prop_map(|(name, virtual_hosts)| {
        pb::RouteTable {
            name,
            virtual_hosts,
        }
    })
}

fn cluster() -> impl Strategy<Value = pb::Cluster> {
    let ring_hash = proptest::option::of((header_name(), small_u32()).prop_map(
        |(header, replicas_per_weight)| pb::RingHash {
            header,
            replicas_per_weight,
        },
    ));
    let breakers = proptest::option::of((small_u32(), small_u32(), small_u32()).prop_map(
        |(max_connections, max_pending_requests, max_requests)| pb::CircuitBreakers {
            max_connections,
            max_pending_requests,
            max_requests,
        },
    ));
    let budget = proptest::option::of((small_u32(), small_u32()).prop_map(
        |(retry_percent, min_retries_per_second)| pb::RetryBudget {
            retry_percent,
            min_retries_per_second,
        },
    ));
    (
        (name(), enum_number(3), enum_number(5), ring_hash),
        (duration(), breakers, budget, duration(), duration()),
        spiffe_id(),
    )
        .prop_map(
            |(
                (name, protocol, lb_policy, ring_hash),
                (connect_timeout, circuit_breakers, retry_budget, idle, dns),
                identity,
            )| pb::Cluster {
                name,
                protocol,
                lb_policy,
                ring_hash,
                connect_timeout,
                circuit_breakers,
                retry_budget,
                idle_connection_timeout: idle,
                dns_min_refresh: dns,
                identity,
            },
        )
}

/// Mostly unset; otherwise a valid SPIFFE ID or something that is not one.
fn spiffe_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        1 => Just("spiffe://gridmesh.test/ns/blocks/sa/a".to_string()),
        1 => "[a-z:/]{0,12}",
    ]
}

fn endpoints() -> impl Strategy<Value = pb::Endpoints> {
    let endpoint = (address(), small_u32(), spiffe_id()).prop_map(|(address, weight, identity)| {
        pb::Endpoint {
            address,
            weight,
            identity,
        }
    });
    (name(), prop::collection::vec(endpoint, 0..4))
        .prop_map(|(cluster, endpoints)| pb::Endpoints { cluster, endpoints })
}

fn listener() -> impl Strategy<Value = pb::Listener> {
    (
        (name(), address(), enum_number(3), name(), enum_number(4)),
        (
            prop_oneof![Just(0u32), 0u32..2_000_000],
            duration(),
            prop_oneof![3 => Just(String::new()), 1 => name()],
            duration(),
            enum_number(3),
        ),
        access_log(),
        prop_oneof![4 => Just(None), 1 => tracing().prop_map(Some)],
    )
        .prop_map(
            |(
                (name, address, direction, route_table, protocol),
                (max_headers, idle_timeout, tcp_cluster, protocol_detection_timeout, tls_mode),
                access_log,
                tracing,
            )| pb::Listener {
                name,
                address,
                direction,
                route_table,
                protocol,
                max_request_headers_bytes: max_headers,
                idle_timeout,
                tcp_cluster,
                protocol_detection_timeout,
                tls_mode,
                access_log,
                tracing,
            },
        )
}

/// Mostly none; else good and bad destinations and ratios.
fn access_log() -> impl Strategy<Value = Option<pb::AccessLog>> {
    let log = (
        prop_oneof![
            Just("stdout"),
            Just("/dev/null"),
            Just("relative.log"),
            Just("")
        ],
        prop::option::of(-0.5f64..1.5),
    )
        .prop_map(|(path, sampling_ratio)| pb::AccessLog {
            path: path.into(),
            sampling_ratio,
        });
    prop_oneof![3 => Just(None), 1 => log.prop_map(Some)]
}

fn authorization_policy() -> impl Strategy<Value = pb::AuthorizationPolicy> {
    use pb::peer_match::Peer;
    let peer = prop_oneof![
        spiffe_id().prop_map(|id| pb::PeerMatch {
            peer: Some(Peer::Exact(id))
        }),
        "[a-z:/.]{0,16}".prop_map(|p| pb::PeerMatch {
            peer: Some(Peer::Prefix(p))
        }),
        "[a-z./]{0,10}".prop_map(|td| pb::PeerMatch {
            peer: Some(Peer::TrustDomain(td))
        }),
        any::<bool>().prop_map(|b| pb::PeerMatch {
            peer: Some(Peer::Authenticated(b))
        }),
        Just(pb::PeerMatch { peer: None }),
    ];
    let request = (
        prop_oneof![Just(Vec::new()), prop::collection::vec("[A-Z ]{0,6}", 0..2)],
        prop_oneof![
            Just(None),
            name().prop_map(|service| Some(pb::GrpcMatch {
                service,
                method: String::new()
            }))
        ],
    )
        .prop_map(|(methods, grpc)| pb::RequestMatch {
            methods,
            grpc,
            ..Default::default()
        });
    let rule = (
        prop::collection::vec(peer, 0..3),
        prop::collection::vec(request, 0..2),
    )
        .prop_map(|(peers, requests)| pb::AuthorizationRule { peers, requests });
    (
        name(),
        prop::collection::vec(name(), 0..2),
        enum_number(2),
        prop::collection::vec(rule, 0..3),
    )
        .prop_map(|(name, listeners, action, rules)| pb::AuthorizationPolicy {
            name,
            listeners,
            action,
            rules,
        })
}

fn bootstrap() -> impl Strategy<Value = Bootstrap> {
    (
        proptest::option::of(address().prop_map(|address| pb::Admin { address })),
        prop::collection::vec(listener(), 0..3),
        prop::collection::vec(route_table(), 0..3),
        prop::collection::vec(cluster(), 0..3),
        prop::collection::vec(endpoints(), 0..3),
        duration(),
        proptest::option::of(Just(pb::Identity {
            source: Some(pb::identity::Source::Files(pb::IdentityFiles {
                certificate: "cert.pem".into(),
                private_key: "key.pem".into(),
                trust_bundle: "bundle.pem".into(),
            })),
        })),
        prop::collection::vec(authorization_policy(), 0..3),
        proptest::option::of(tracing()),
        prop::collection::vec(vdag(), 0..2),
    )
        .prop_map(
            |(
                admin,
                listeners,
                route_tables,
                clusters,
                endpoints,
                drain_timeout,
                identity,
                authorization_policies,
                tracing,
                vdags,
            )| {
                Bootstrap {
                    admin,
                    listeners,
                    route_tables,
                    clusters,
                    endpoints,
                    drain_timeout,
                    xds: None,
                    identity,
                    authorization_policies,
                    tracing,
                    vdags,
                }
            },
        )
}

/// Small graphs over three labels, most of them wrong in some way.
fn vdag() -> impl Strategy<Value = pb::VDag> {
    let label = || prop::sample::select(vec!["a", "b", "c", ""]).prop_map(String::from);
    let node = (
        label(),
        name(),
        prop::collection::vec(label(), 0..2),
        duration(),
        0u32..12,
    )
        .prop_map(
            |(label, cluster, inputs, timeout, max_retries)| pb::VDagNode {
                label,
                cluster,
                inputs,
                timeout,
                max_retries,
                ..Default::default()
            },
        );
    let mapping =
        (label(), label()).prop_map(|(output, input)| pb::TensorMapping { output, input });
    let edge = (label(), label(), prop::collection::vec(mapping, 0..2))
        .prop_map(|(from, to, tensors)| pb::VDagEdge { from, to, tensors });
    (
        name(),
        prop::collection::vec(node, 0..4),
        prop::collection::vec(edge, 0..4),
        prop::collection::vec(label(), 0..2),
        prop::collection::vec(label(), 0..2),
        duration(),
        // KSERVE_V2, INFERENCE_PROXY, and a value no release knows.
        0i32..3,
    )
        .prop_map(
            |(name, nodes, edges, entry, tails, timeout, protocol)| pb::VDag {
                name,
                version: "1".into(),
                nodes,
                edges,
                entry,
                tails,
                timeout,
                protocol,
            },
        )
}

fn tracing() -> impl Strategy<Value = pb::Tracing> {
    (
        prop::sample::select(vec![
            "http://collector:4317",
            "https://c:4318/v1/traces",
            "collector:4317",
            "",
        ]),
        enum_number(2),
        proptest::option::of(prop::sample::select(vec![-0.5, 0.0, 0.01, 0.5, 1.0, 1.5])),
        small_u32(),
        duration(),
        proptest::option::of(header_name()),
    )
        .prop_map(
            |(endpoint, protocol, sampling_ratio, max_queue_size, export_timeout, header)| {
                pb::Tracing {
                    endpoint: endpoint.into(),
                    protocol,
                    headers: header.into_iter().map(|h| (h, "v".into())).collect(),
                    sampling_ratio,
                    resource_attributes: [("service.name".into(), "fuzz".into())].into(),
                    max_queue_size,
                    export_timeout,
                }
            },
        )
}

/// Every problem names a resource and a field, and the rendered error
/// carries the source, resource and field of each.
fn assert_explained(error: &ConfigError, source: &str) {
    assert_eq!(error.source, source);
    assert!(!error.problems.is_empty(), "an error without problems");
    let text = error.to_string();
    assert!(text.contains(source), "{text}");
    for p in &error.problems {
        assert!(!p.resource.trim().is_empty(), "no resource: {p:?}");
        assert!(!p.field.trim().is_empty(), "no field: {p:?}");
        assert!(!p.message.trim().is_empty(), "no message: {p:?}");
        assert!(
            text.contains(&format!("{}: {}: {}", p.resource, p.field, p.message)),
            "{p:?} not rendered in:\n{text}"
        );
    }
}

/// A small bootstrap that validates, to perturb one field at a time.
fn good() -> Bootstrap {
    let yaml = r#"
admin: { address: "127.0.0.1:0" }
drainTimeout: 1s
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: t }
routeTables:
  - name: t
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - name: r
            match:
              regex: "/v[0-9]+/.*"
              headers: [{ name: x-tenant, exact: blue }]
            route:
              cluster: c
              timeouts: { responseHeaders: 1s, idle: 2s, maxDuration: 3s }
              retryPolicy: { maxRetries: 2, retryOn: [RESET], backoff: 0.01s }
clusters:
  - name: c
    lbPolicy: RING_HASH
    ringHash: { header: x-session }
    connectTimeout: 0.25s
endpoints:
  - cluster: c
    endpoints: [{ address: "127.0.0.1:9", weight: 2 }]
"#;
    parse_bootstrap(yaml, "good.yaml").expect("the base bootstrap parses")
}

fn route_of(b: &mut Bootstrap) -> &mut pb::Route {
    &mut b.route_tables[0].virtual_hosts[0].routes[0]
}

fn action_of(b: &mut Bootstrap) -> &mut pb::RouteAction {
    route_of(b).route.as_mut().unwrap()
}

fn timeouts_of(b: &mut Bootstrap) -> &mut pb::Timeouts {
    action_of(b).timeouts.as_mut().unwrap()
}

const ROUTE: &str = "virtualHosts[0].routes[0]";

/// Which duration field of [`good`] a perturbation hits, with the resource
/// and field a problem about it must name.
fn duration_slot(
    b: &mut Bootstrap,
    slot: usize,
) -> (&mut Option<PbDuration>, &'static str, String) {
    let route_resource = "routeTable \"t\"";
    let cluster_resource = "cluster \"c\"";
    match slot {
        0 => (&mut b.drain_timeout, "bootstrap", "drainTimeout".into()),
        1 => (
            &mut b.clusters[0].connect_timeout,
            cluster_resource,
            "connectTimeout".into(),
        ),
        2 => (
            &mut b.clusters[0].idle_connection_timeout,
            cluster_resource,
            "idleConnectionTimeout".into(),
        ),
        3 => (
            &mut b.clusters[0].dns_min_refresh,
            cluster_resource,
            "dnsMinRefresh".into(),
        ),
        4 => (
            &mut timeouts_of(b).response_headers,
            route_resource,
            format!("{ROUTE}.route.timeouts.responseHeaders"),
        ),
        5 => (
            &mut timeouts_of(b).idle,
            route_resource,
            format!("{ROUTE}.route.timeouts.idle"),
        ),
        6 => (
            &mut timeouts_of(b).max_duration,
            route_resource,
            format!("{ROUTE}.route.timeouts.maxDuration"),
        ),
        _ => (
            &mut action_of(b).retry_policy.as_mut().unwrap().backoff,
            route_resource,
            format!("{ROUTE}.route.retryPolicy.backoff"),
        ),
    }
}

fn expect_problem(b: Bootstrap, resource: &str, field: &str) {
    let error = build_snapshot(b, "perturbed.yaml").expect_err("the perturbation is invalid");
    assert_explained(&error, "perturbed.yaml");
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.resource == resource && p.field == field),
        "expected a problem at {resource} {field}, got {:#?}",
        error.problems
    );
}

/// Problems point back at the resource they belong to by kind and position,
/// which is how the control plane finds the file and the xDS client the
/// update to reject.
#[test]
fn problems_locate_their_resource() {
    let mut b = good();
    b.clusters.push(b.clusters[0].clone());
    b.clusters[1].name = "c2".into();
    b.clusters[1].connect_timeout = Some(pbjson_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    action_of(&mut b).cluster_specifier = Some(ClusterSpecifier::Cluster("missing".into()));
    let error = build_snapshot(b, "located.yaml").unwrap_err();
    let at = |kind, index| Some(ResourceAt { kind, index });
    let located: Vec<_> = error
        .problems
        .iter()
        .map(|p| (p.at, p.field.as_str()))
        .collect();
    assert!(
        located.contains(&(at(Kind::Cluster, 1), "connectTimeout")),
        "{located:?}"
    );
    assert!(
        located.contains(&(
            at(Kind::RouteTable, 0),
            "virtualHosts[0].routes[0].route.cluster"
        )),
        "{located:?}"
    );
}

/// A ratio written to the JSON mapping (as `/config_dump` does) loads back
/// bit for bit: the shortest decimal form of a double needs a correctly
/// rounded parser, which serde_json's default fast path is not (this value
/// came back one unit in the last place off before `float_roundtrip`).
#[test]
fn ratios_survive_the_json_mapping_bit_for_bit() {
    let mut b = good();
    b.listeners[0].access_log = Some(pb::AccessLog {
        path: "stdout".into(),
        sampling_ratio: Some(-0.47882810971195283),
    });
    let json = serde_json::to_string(&b).unwrap();
    let back: Bootstrap = serde_json::from_str(&json).unwrap();
    assert_eq!(back, b, "{json}");
}

/// What a control plane serves is validated like a sidecar's bootstrap,
/// except that listeners of different sidecars may share an address and
/// sidecar-local settings are refused.
#[test]
fn served_resources_may_share_listener_addresses_but_not_carry_sidecar_settings() {
    let mut b = good();
    b.listeners[0].address = "0.0.0.0:15006".into();
    let mut second = b.listeners[0].clone();
    second.name = "in-2".into();
    b.listeners.push(second);
    let error = build_snapshot(b.clone(), "sidecar.yaml").unwrap_err();
    assert!(
        error.problems.iter().any(|p| p.field == "address"),
        "{error}"
    );

    let error = validate_served(b.clone(), "served.yaml").unwrap_err();
    let fields: Vec<_> = error.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["admin", "drainTimeout"], "{error}");

    b.admin = None;
    b.drain_timeout = None;
    validate_served(b, "served.yaml").expect("shared addresses are fine when served");
}

#[test]
fn the_xds_address_must_be_host_and_port() {
    for (address, valid) in [
        ("gridmesh-control:15012", true),
        ("http://127.0.0.1:15012", true),
        ("gridmesh-control", false),
        ("http://:15012", false),
        ("host:0", false),
        ("", false),
    ] {
        let mut b = good();
        b.xds = Some(pb::Xds {
            address: address.into(),
            listeners: vec![],
            identity: String::new(),
        });
        let result = build_snapshot(b, "xds.yaml");
        assert_eq!(result.is_ok(), valid, "{address:?}: {:?}", result.err());
    }
}

#[test]
fn tracing_settings_are_checked_and_defaulted() {
    let tracing = |yaml: &str| {
        let text = format!("tracing: {yaml}");
        let mut b = good();
        b.tracing = crate::parse_bootstrap(&text, "t.yaml")
            .unwrap_or_else(|e| panic!("{e}"))
            .tracing;
        build_snapshot(b, "t.yaml")
    };
    let settings = tracing(r#"{ endpoint: "http://collector:4317" }"#)
        .unwrap()
        .tracing
        .unwrap();
    assert_eq!(settings.sampling_ratio, 0.01);
    assert_eq!(settings.max_queue, 2048);
    assert_eq!(settings.export_timeout, std::time::Duration::from_secs(10));
    let settings = tracing(
        r#"{ endpoint: "http://c:4318/v1/traces", protocol: HTTP_PROTOBUF, samplingRatio: 0, maxQueueSize: 8, exportTimeout: 1s, headers: { x-key: v } }"#,
    )
    .unwrap()
    .tracing
    .unwrap();
    assert_eq!(
        (
            settings.protocol,
            settings.sampling_ratio,
            settings.max_queue
        ),
        (gridmesh_telemetry::OtlpProtocol::HttpProtobuf, 0.0, 8)
    );
    for (yaml, field) in [
        (r#"{ endpoint: "collector:4317" }"#, "tracing.endpoint"),
        (r#"{ endpoint: "" }"#, "tracing.endpoint"),
        (r#"{ endpoint: "grpc://c:4317" }"#, "tracing.endpoint"),
        (
            r#"{ endpoint: "http://c:4317", samplingRatio: 1.5 }"#,
            "tracing.samplingRatio",
        ),
        (
            r#"{ endpoint: "http://c:4317", samplingRatio: -0.1 }"#,
            "tracing.samplingRatio",
        ),
        (
            r#"{ endpoint: "http://c:4317", exportTimeout: 0s }"#,
            "tracing.exportTimeout",
        ),
        (
            r#"{ endpoint: "http://c:4317", headers: { X-Key: v } }"#,
            "tracing.headers.X-Key",
        ),
        (
            r#"{ endpoint: "http://c:4317", headers: { "a b": v } }"#,
            "tracing.headers.a b",
        ),
    ] {
        let error = tracing(yaml).unwrap_err();
        let fields: Vec<_> = error.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, [field], "{yaml}: {error}");
    }
    // A control plane serves resources, not a sidecar's tracing.
    let mut b = good();
    b.tracing = Some(pb::Tracing {
        endpoint: "http://c:4317".into(),
        ..Default::default()
    });
    let error = validate_served(b, "served.yaml").unwrap_err();
    assert!(
        error.problems.iter().any(|p| p.field == "tracing"),
        "{error}"
    );
}

/// No regression files: a failure prints its minimal input, which belongs
/// in a named test.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Largest duration the proto3 JSON mapping allows (about 10,000 years).
const MAX_PROTO_SECONDS: i64 = 315_576_000_000;

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bootstraps_validate_or_explain(b in bootstrap()) {
        match build_snapshot(b.clone(), "random.yaml") {
            Ok(snapshot) => {
                // What validated is what the snapshot serves and dumps.
                prop_assert_eq!(&snapshot.bootstrap, &b);
                prop_assert_eq!(snapshot.listeners.len(), b.listeners.len());
                prop_assert_eq!(snapshot.clusters.len(), b.clusters.len());
            }
            Err(e) => assert_explained(&e, "random.yaml"),
        }
    }

    /// Whatever survives serialization to the JSON mapping loads back as the
    /// same resources, and validates the same way (what `/config_dump` shows
    /// can be fed back to a proxy).
    #[test]
    fn bootstraps_round_trip_through_the_json_mapping(b in bootstrap()) {
        // Nanos beyond +-999,999,999 are not a Duration at all (the
        // validator says so), and pbjson writes them as a different value.
        let out_of_range_nanos = build_snapshot(b.clone(), "x")
            .is_err_and(|e| e.problems.iter().any(|p| p.message.starts_with("nanos")));
        if out_of_range_nanos {
            return Ok(());
        }
        let Ok(json) = serde_json::to_string(&b) else {
            // Durations with inconsistent signs have no JSON form.
            return Ok(());
        };
        let Ok(back) = serde_json::from_str::<Bootstrap>(&json) else {
            // Durations beyond the mapping's range need not load back.
            prop_assert!(build_snapshot(b, "x").is_err());
            return Ok(());
        };
        prop_assert_eq!(&back, &b);
        prop_assert_eq!(
            build_snapshot(back, "x").is_ok(),
            build_snapshot(b, "x").is_ok()
        );
    }

    /// Arbitrary text never panics the loader, and a rejection is explained.
    #[test]
    fn arbitrary_text_is_parsed_or_explained(text in "(.|\n){0,200}") {
        if let Err(e) = load_str(&text, "text.yaml") {
            assert_explained(&e, "text.yaml");
        }
    }

    /// A negative duration anywhere is named at its field.
    #[test]
    fn negative_durations_are_named(slot in 0usize..8, seconds in i64::MIN..0, nanos in -999_999_999i32..=0) {
        let mut b = good();
        let (d, resource, field) = duration_slot(&mut b, slot);
        *d = Some(PbDuration { seconds, nanos });
        expect_problem(b, resource, &field);
    }

    /// Nanos outside [0, 1e9) (for a non-negative duration) are not a
    /// duration the proto allows; they must not be carried silently.
    #[test]
    fn out_of_range_nanos_are_named(slot in 0usize..8, seconds in 0i64..100, nanos in prop_oneof![1_000_000_000i32.., i32::MIN..-999_999_999]) {
        let mut b = good();
        let (d, resource, field) = duration_slot(&mut b, slot);
        *d = Some(PbDuration { seconds, nanos });
        expect_problem(b, resource, &field);
    }

    /// Durations beyond the proto's range would overflow deadlines on the
    /// request path (`Instant + d`): they are rejected at load time.
    #[test]
    fn durations_beyond_the_proto_range_are_named(slot in 0usize..8, seconds in MAX_PROTO_SECONDS + 1..) {
        let mut b = good();
        let (d, resource, field) = duration_slot(&mut b, slot);
        *d = Some(PbDuration { seconds, nanos: 0 });
        expect_problem(b, resource, &field);
    }

    /// Any duration within range is accepted where zero is not special.
    #[test]
    fn in_range_durations_are_accepted(slot in 0usize..8, seconds in 1i64..=MAX_PROTO_SECONDS, nanos in 0i32..1_000_000_000) {
        let mut b = good();
        let (d, _, _) = duration_slot(&mut b, slot);
        *d = Some(PbDuration { seconds, nanos });
        let snapshot = build_snapshot(b, "x");
        prop_assert!(snapshot.is_ok(), "{}", snapshot.unwrap_err());
    }

    #[test]
    fn unknown_enum_numbers_are_named(which in 0usize..4, n in prop_oneof![i32::MIN..0, 5i32..]) {
        let mut b = good();
        let (resource, field) = match which {
            0 => { b.listeners[0].direction = n; ("listener \"in\"", "direction".to_string()) }
            1 => { b.listeners[0].protocol = n; ("listener \"in\"", "protocol".to_string()) }
            2 => { b.clusters[0].lb_policy = n; ("cluster \"c\"", "lbPolicy".to_string()) }
            _ => {
                action_of(&mut b).retry_policy.as_mut().unwrap().retry_on.push(n);
                ("routeTable \"t\"", format!("{ROUTE}.route.retryPolicy.retryOn[1]"))
            }
        };
        expect_problem(b, resource, &field);
    }

    #[test]
    fn invalid_regexes_are_named(pattern in prop::sample::select(vec!["(", "[a-", "\\", "(?<", "x{2,1}", "a)",
            // Balanced only once wrapped in the anchors: must not escape them.
            "/a)|(/b", ")|("])) {
        let mut b = good();
        route_of(&mut b).r#match.as_mut().unwrap().path_specifier =
            Some(PathSpecifier::Regex(pattern.to_string()));
        expect_problem(b, "routeTable \"t\"", &format!("{ROUTE}.match.regex"));
    }

    #[test]
    fn invalid_header_names_are_named(name in "[ -~]{0,6}[ :()\"/\\[\\]{}][ -~]{0,6}") {
        let mut b = good();
        route_of(&mut b).r#match.as_mut().unwrap().headers[0].name = name;
        expect_problem(b, "routeTable \"t\"", &format!("{ROUTE}.match.headers[0].name"));
    }

    #[test]
    fn endpoint_addresses_validate_or_are_named(address in address()) {
        let mut b = good();
        b.endpoints[0].endpoints[0].address = address;
        if let Err(e) = build_snapshot(b, "x") {
            assert_explained(&e, "x");
            prop_assert!(
                e.problems.iter().all(|p| p.resource == "endpoints \"c\"" && p.field == "endpoints[0].address"),
                "{:#?}", e.problems
            );
        }
    }

    #[test]
    fn weights_validate_or_are_named(weights in prop::collection::vec(any::<u32>(), 1..4)) {
        let mut b = good();
        action_of(&mut b).cluster_specifier = Some(ClusterSpecifier::WeightedClusters(pb::WeightedClusters {
            clusters: weights.iter().map(|&weight| pb::ClusterWeight { name: "c".into(), weight }).collect(),
        }));
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        match build_snapshot(b, "x") {
            Ok(_) => prop_assert!(total > 0 && total <= u64::from(u32::MAX)),
            Err(e) => {
                assert_explained(&e, "x");
                prop_assert!(total == 0 || total > u64::from(u32::MAX));
                let field = format!("{ROUTE}.route.weightedClusters.clusters");
                prop_assert!(e.problems.iter().any(|p| p.field == field), "{:#?}", e.problems);
            }
        }
    }
}

#[test]
fn tcp_listeners_name_a_cluster_and_no_route_table() {
    use pb::listener::DownstreamProtocol;
    let tcp = |b: &mut Bootstrap| {
        let l = &mut b.listeners[0];
        l.protocol = DownstreamProtocol::Tcp as i32;
        l.route_table.clear();
        l.tcp_cluster = "c".into();
    };
    let mut b = good();
    tcp(&mut b);
    let snapshot = build_snapshot(b, "x").unwrap_or_else(|e| panic!("{e}"));
    let listener = &snapshot.listeners[0];
    assert_eq!(
        (listener.route_table, listener.tcp_cluster),
        (None, Some(0))
    );

    let mut b = good();
    tcp(&mut b);
    b.listeners[0].tcp_cluster.clear();
    expect_problem(b, "listener \"in\"", "tcpCluster");
    let mut b = good();
    tcp(&mut b);
    b.listeners[0].route_table = "t".into();
    expect_problem(b, "listener \"in\"", "routeTable");
    let mut b = good();
    b.listeners[0].tcp_cluster = "nope".into();
    expect_problem(b, "listener \"in\"", "tcpCluster");
    let mut b = good();
    b.listeners[0].protocol_detection_timeout = Some(PbDuration {
        seconds: 6,
        nanos: 0,
    });
    expect_problem(b, "listener \"in\"", "protocolDetectionTimeout");
}

/// A rebuild converts only what the change carries: untouched clusters and
/// route tables are the very ones of the previous snapshot, a table whose
/// clusters moved is pointed at their new positions, and one whose cluster
/// is gone is converted again so the problem is reported as in a full build.
#[test]
fn a_rebuild_takes_over_what_the_change_does_not_carry() {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::{Carryover, rebuild_snapshot};
    use crate::route::Target;

    const YAML: &str = r#"
clusters: [{ name: first }, { name: second }, { name: third }]
endpoints:
  - { cluster: first, endpoints: [{ address: "127.0.0.1:9001" }] }
  - { cluster: second, endpoints: [{ address: "127.0.0.1:9002" }] }
routeTables:
  - name: uses-third
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, route: { cluster: third } }] }]
  - name: uses-second
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, route: { cluster: second } }] }]
"#;
    let parsed = || parse_bootstrap(YAML, "x").unwrap_or_else(|e| panic!("{e}"));
    let previous = build_snapshot(parsed(), "x").unwrap_or_else(|e| panic!("{e}"));
    let target = |s: &super::Snapshot, table: usize| match s.route_tables[table].virtual_hosts[0]
        .routes[0]
        .action
        .target
    {
        Target::Cluster(index) => s.clusters[index].name.clone(),
        Target::Weighted { .. } | Target::VDag(_) => unreachable!("single-cluster routes"),
    };

    // New endpoints for `second`: only that cluster is converted.
    let mut b = parsed();
    b.endpoints[1].endpoints[0].address = "127.0.0.1:9003".into();
    let changed = HashSet::from(["second"]);
    let carryover = Carryover {
        previous: &previous,
        kind: Kind::Endpoints,
        changed: &changed,
    };
    let next = rebuild_snapshot(b, "x", &carryover).unwrap_or_else(|e| panic!("{e}"));
    assert!(Arc::ptr_eq(&next.clusters[0], &previous.clusters[0]));
    assert!(Arc::ptr_eq(&next.clusters[2], &previous.clusters[2]));
    assert!(!Arc::ptr_eq(&next.clusters[1], &previous.clusters[1]));
    let moved = super::EndpointAddress::Socket("127.0.0.1:9003".parse().unwrap());
    assert_eq!(next.clusters[1].endpoints[0].address, moved);
    for (a, b) in next.route_tables.iter().zip(&previous.route_tables) {
        assert!(Arc::ptr_eq(a, b), "route table {} was converted", a.name);
    }

    // `first` removed: the tables' clusters moved up one place; both are
    // relinked (not the same Arc) and still reach the same clusters.
    let mut b = parsed();
    b.clusters.remove(0);
    b.endpoints.remove(0);
    let changed = HashSet::from(["first"]);
    let carryover = Carryover {
        previous: &previous,
        kind: Kind::Cluster,
        changed: &changed,
    };
    let next = rebuild_snapshot(b, "x", &carryover).unwrap_or_else(|e| panic!("{e}"));
    assert!(Arc::ptr_eq(&next.clusters[0], &previous.clusters[1]));
    assert_eq!(
        (target(&next, 0), target(&next, 1)),
        ("third".into(), "second".into())
    );
    assert!(!Arc::ptr_eq(
        &next.route_tables[0],
        &previous.route_tables[0]
    ));

    // `third` removed while a table it does not carry uses it: the table is
    // converted again and the problem named as a full build names it.
    let mut b = parsed();
    b.clusters.remove(2);
    let changed = HashSet::from(["third"]);
    let carryover = Carryover {
        previous: &previous,
        kind: Kind::Cluster,
        changed: &changed,
    };
    let error = rebuild_snapshot(b.clone(), "x", &carryover).unwrap_err();
    let full = build_snapshot(b, "x").unwrap_err();
    assert_eq!(error.problems, full.problems);
    assert_eq!(error.problems[0].resource, "routeTable \"uses-third\"");
}
