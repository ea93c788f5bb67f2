use gridmesh_proto::config::{self as pb, Bootstrap};

use super::BlockProtocol;
use crate::{build_snapshot, parse_bootstrap};

/// A diamond: `pre` fans out to `left` and `right`, which `post` joins.
fn diamond() -> Bootstrap {
    let yaml = r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: t }
routeTables:
  - name: t
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: r, route: { cluster: pre } }]
clusters: [{ name: pre }, { name: side }, { name: post }]
vdags:
  - name: pipeline
    version: "3"
    entry: [pre]
    tails: [post]
    nodes:
      - { label: pre, cluster: pre }
      - { label: left, cluster: side, model: left-model, timeout: 0.5s, maxRetries: 2 }
      - { label: right, cluster: side }
      - { label: post, cluster: post, inputs: [l, r] }
    edges:
      - { from: pre, to: left }
      - { from: pre, to: right }
      - { from: left, to: post, tensors: [{ output: out, input: l }] }
      - { from: right, to: post, tensors: [{ output: out, input: r }] }
"#;
    parse_bootstrap(yaml, "diamond.yaml").expect("the diamond parses")
}

fn vdag_of(b: &mut Bootstrap) -> &mut pb::VDag {
    &mut b.vdags[0]
}

/// `b` is refused with a problem at `field` of `resource` whose message
/// says `saying`.
fn refused(b: Bootstrap, resource: &str, field: &str, saying: &str) {
    let error = build_snapshot(b, "bad.yaml").expect_err("the change is invalid");
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.resource == resource && p.field == field && p.message.contains(saying)),
        "expected {resource}: {field}: ...{saying}..., got {:#?}",
        error.problems
    );
}

const VDAG: &str = "vdag \"pipeline\"";

#[test]
fn a_diamond_compiles_to_nodes_with_their_edges_and_joins() {
    let snapshot = build_snapshot(diamond(), "diamond.yaml").expect("valid");
    let v = &snapshot.vdags["pipeline"];
    assert_eq!(v.version, "3");
    assert_eq!(v.timeout, std::time::Duration::from_secs(30));
    let label = |i: usize| v.nodes[i].label.as_str();
    assert_eq!(
        v.entry.iter().map(|&i| label(i)).collect::<Vec<_>>(),
        ["pre"]
    );
    assert_eq!(
        v.tails.iter().map(|&i| label(i)).collect::<Vec<_>>(),
        ["post"]
    );
    let pre = &v.nodes[v.node("pre").unwrap()];
    let next: Vec<_> = pre.next.iter().map(|e| label(e.to)).collect();
    assert_eq!(next, ["left", "right"]);
    assert!(pre.next.iter().all(|e| e.tensors.is_empty()));
    let post = &v.nodes[v.node("post").unwrap()];
    let previous: Vec<_> = post.previous.iter().map(|&i| label(i)).collect();
    assert_eq!(previous, ["left", "right"]);
    let left = &v.nodes[v.node("left").unwrap()];
    assert_eq!(left.model, "left-model");
    assert_eq!(pre.model, "pre", "the model defaults to the label");
    assert_eq!(left.timeout, Some(std::time::Duration::from_millis(500)));
    assert_eq!(left.max_retries, 2);
    assert_eq!(left.next[0].tensors, [("out".to_string(), "l".to_string())]);
    assert_eq!(
        snapshot.clusters[left.cluster].name, "side",
        "nodes point at their cluster"
    );
}

#[test]
fn labels_must_be_unique_and_plain() {
    let mut b = diamond();
    vdag_of(&mut b).nodes[2].label = "left".into();
    refused(b, VDAG, "nodes[2].label", "duplicate node label \"left\"");
    let mut b = diamond();
    vdag_of(&mut b).nodes[2].label = "ri/ght".into();
    refused(b, VDAG, "nodes[2].label", "is not a node label");
}

#[test]
fn nodes_name_known_clusters_and_edges_known_nodes() {
    let mut b = diamond();
    vdag_of(&mut b).nodes[1].cluster = "gone".into();
    refused(b, VDAG, "nodes[1].cluster", "no cluster named \"gone\"");
    let mut b = diamond();
    vdag_of(&mut b).edges[1].to = "nowhere".into();
    refused(b, VDAG, "edges[1].to", "no node labelled \"nowhere\"");
    let mut b = diamond();
    vdag_of(&mut b).edges[0].to = "pre".into();
    refused(b, VDAG, "edges[0]", "may not lead back");
    let mut b = diamond();
    let again = vdag_of(&mut b).edges[0].clone();
    vdag_of(&mut b).edges.push(again);
    refused(
        b,
        VDAG,
        "edges[4]",
        "duplicate edge from \"pre\" to \"left\"",
    );
}

#[test]
fn cycles_are_refused_and_named() {
    let mut b = diamond();
    let v = vdag_of(&mut b);
    // left -> mid -> left, with mid also feeding post so that nothing else
    // is wrong.
    v.nodes.push(pb::VDagNode {
        label: "mid".into(),
        cluster: "side".into(),
        ..Default::default()
    });
    for (from, to) in [("left", "mid"), ("mid", "left")] {
        v.edges.push(pb::VDagEdge {
            from: from.into(),
            to: to.into(),
            tensors: vec![],
        });
    }
    refused(
        b,
        VDAG,
        "edges",
        "the edges form a cycle: left -> mid -> left",
    );
}

#[test]
fn every_node_is_reached_and_leads_to_a_tail() {
    let mut b = diamond();
    let v = vdag_of(&mut b);
    v.nodes.push(pb::VDagNode {
        label: "orphan".into(),
        cluster: "side".into(),
        ..Default::default()
    });
    v.edges.push(pb::VDagEdge {
        from: "orphan".into(),
        to: "right".into(),
        tensors: vec![],
    });
    refused(
        b,
        VDAG,
        "nodes[4]",
        "\"orphan\" cannot be reached from an entry node",
    );
    let mut b = diamond();
    let v = vdag_of(&mut b);
    v.nodes.push(pb::VDagNode {
        label: "dead-end".into(),
        cluster: "side".into(),
        ..Default::default()
    });
    v.edges.push(pb::VDagEdge {
        from: "pre".into(),
        to: "dead-end".into(),
        tensors: vec![],
    });
    refused(b, VDAG, "nodes[4]", "\"dead-end\" leads nowhere");
}

#[test]
fn entries_take_no_edge_and_tails_give_none() {
    let mut b = diamond();
    vdag_of(&mut b).entry = vec!["left".into()];
    refused(b, VDAG, "entry", "entry node \"left\" is fed by an edge");
    let mut b = diamond();
    vdag_of(&mut b).tails.push("pre".into());
    refused(b, VDAG, "tails", "tail node \"pre\" has edges leaving it");
    let mut b = diamond();
    vdag_of(&mut b).entry.clear();
    refused(b, VDAG, "entry", "must name at least one node");
    let mut b = diamond();
    vdag_of(&mut b).tails.push("post".into());
    refused(b, VDAG, "tails[1]", "\"post\" is listed twice");
}

#[test]
fn every_listed_input_is_fed_once() {
    let mut b = diamond();
    vdag_of(&mut b).edges[3].tensors[0].input = "l".into();
    refused(
        b,
        VDAG,
        "edges[3].tensors[0].input",
        "\"l\" of node \"post\" is already fed by edges[2]",
    );
    let mut b = diamond();
    vdag_of(&mut b).edges[3].tensors.clear();
    vdag_of(&mut b).edges[3].tensors.push(pb::TensorMapping {
        output: "out".into(),
        input: "other".into(),
    });
    refused(
        b.clone(),
        VDAG,
        "edges[3].tensors[0].input",
        "node \"post\" takes no input \"other\"",
    );
    refused(
        b,
        VDAG,
        "nodes[3].inputs",
        "no edge feeds input \"r\" of node \"post\"",
    );
}

#[test]
fn limits_and_names_are_checked() {
    let mut b = diamond();
    vdag_of(&mut b).nodes[0].max_retries = 11;
    refused(b, VDAG, "nodes[0].maxRetries", "at most 10");
    let mut b = diamond();
    vdag_of(&mut b).timeout = Some(pbjson_types::Duration {
        seconds: 0,
        nanos: 0,
    });
    refused(b, VDAG, "timeout", "greater than zero");
    let mut b = diamond();
    let twin = vdag_of(&mut b).clone();
    b.vdags.push(twin);
    refused(b, "vdag[1]", "name", "duplicate vdag name \"pipeline\"");
}

/// A route may call a vDAG; one that names no vDAG, or another version, is
/// refused — and so is removing a vDAG a route calls.
#[test]
fn routes_call_vdags_that_exist() {
    use gridmesh_proto::config::route_action::ClusterSpecifier;
    let with_route = |named: &str| {
        let mut b = diamond();
        let action = b.route_tables[0].virtual_hosts[0].routes[0]
            .route
            .as_mut()
            .unwrap();
        action.cluster_specifier = Some(ClusterSpecifier::Vdag(named.into()));
        b
    };
    for named in ["pipeline", "pipeline:3"] {
        let snapshot = build_snapshot(with_route(named), "x").unwrap_or_else(|e| panic!("{e}"));
        let route = &snapshot.route_tables[0].virtual_hosts[0].routes[0];
        assert_eq!(route.action.target.vdag(), Some(named));
        assert_eq!(route.action.target.pick(), None);
    }
    let field = "virtualHosts[0].routes[0].route.vdag";
    let table = "routeTable \"t\"";
    refused(with_route("other"), table, field, "no vDAG named \"other\"");
    refused(
        with_route("pipeline:4"),
        table,
        field,
        "vDAG pipeline is at version \"3\"",
    );
    let mut removed = with_route("pipeline");
    removed.vdags.clear();
    refused(removed, table, field, "no vDAG named \"pipeline\"");
}

/// A chain of InferenceProxy blocks a -> b.
fn inference_proxy_chain() -> Bootstrap {
    let yaml = r#"
clusters: [{ name: a }, { name: b }]
vdags:
  - name: packets
    version: "1"
    protocol: INFERENCE_PROXY
    entry: [a]
    tails: [b]
    nodes:
      - { label: a, cluster: a, model: block-a }
      - { label: b, cluster: b }
    edges:
      - { from: a, to: b }
"#;
    parse_bootstrap(yaml, "packets.yaml").expect("the chain parses")
}

#[test]
fn inference_proxy_vdags_name_nodes_by_block_id() {
    let snapshot = build_snapshot(inference_proxy_chain(), "packets.yaml").expect("valid");
    let v = &snapshot.vdags["packets"];
    assert_eq!(v.protocol, BlockProtocol::InferenceProxy);
    assert_eq!(v.node_of_block("block-a"), Some(0));
    // The block id defaults to the label.
    assert_eq!(v.node_of_block("b"), Some(1));
    assert_eq!(v.node_of_block("a"), None);
}

#[test]
fn inference_proxy_vdags_refuse_what_whole_packets_cannot_do() {
    const PACKETS: &str = "vdag \"packets\"";
    let mut b = inference_proxy_chain();
    vdag_of(&mut b).nodes[1].model = "block-a".into();
    refused(b, PACKETS, "nodes[1].model", "also nodes[0]'s");

    let mut b = inference_proxy_chain();
    vdag_of(&mut b).nodes[1].model = "final".into();
    refused(b, PACKETS, "nodes[1].model", "where tails send");

    let mut b = inference_proxy_chain();
    vdag_of(&mut b).edges[0].tensors = vec![pb::TensorMapping {
        output: "out".into(),
        input: "in".into(),
    }];
    refused(b, PACKETS, "edges[0].tensors", "must be empty");

    let mut b = inference_proxy_chain();
    vdag_of(&mut b).nodes[1].inputs = vec!["x".into()];
    refused(b, PACKETS, "nodes[1].inputs", "must be empty");

    let mut b = inference_proxy_chain();
    let v = vdag_of(&mut b);
    v.entry = vec!["a".into()];
    v.tails = vec!["a".into(), "b".into()];
    v.edges.clear();
    refused(b, PACKETS, "tails", "one tail");
}
