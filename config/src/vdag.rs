//! vDAGs compiled from `gridmesh.v1.VDag`: nodes by index, each with the
//! edges that leave it and the nodes it waits for, so that a sidecar
//! forwarding a hop finds what comes next without a lookup by name.
//!
//! Validation proves the graph can run before any sidecar tries: every
//! label and cluster resolves, the graph is acyclic, every node is reached
//! from an entry and leads to a tail, and no input is fed twice or (when a
//! node lists its inputs) left unfed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use gridmesh_proto::config as pb;
use gridmesh_proto::resource::Kind;

use crate::validate::{Checker, MAX_RETRIES};

/// What a vDAG's blocks speak (`gridmesh.v1.VDag.BlockProtocol`).
pub use pb::v_dag::BlockProtocol;

/// The key an INFERENCE_PROXY block sends its output to when it is a tail
/// (`output_ptr`'s `graph.final`); no node's block id may take it.
pub const FINAL: &str = "final";
/// The most next hops one INFERENCE_PROXY block may have: each is told a
/// distinct address of its sidecar, 127.0.0.1 to 127.0.0.254.
pub const MAX_NEXT_BLOCKS: usize = 254;
/// A request's deadline when neither the client nor the vDAG sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct VDagSpec {
    pub name: String,
    pub version: String,
    /// Indexed by node number, in the order the resource lists them.
    pub nodes: Vec<NodeSpec>,
    pub entry: Vec<usize>,
    pub tails: Vec<usize>,
    pub timeout: Duration,
    pub protocol: BlockProtocol,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub label: String,
    /// Index into the snapshot's clusters.
    pub cluster: usize,
    pub model: String,
    pub model_version: String,
    pub timeout: Option<Duration>,
    pub max_retries: u32,
    /// The edges leaving this node.
    pub next: Vec<EdgeSpec>,
    /// The nodes whose outputs this one waits for (more than one: a join).
    pub previous: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSpec {
    pub to: usize,
    /// (output, input) pairs; empty: every output under its own name.
    pub tensors: Vec<(String, String)>,
}

impl VDagSpec {
    pub fn node(&self, label: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.label == label)
    }

    /// The node whose block has the id `block` (its `model`): how an
    /// INFERENCE_PROXY packet's `x-service-name` names a node.
    pub fn node_of_block(&self, block: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.model == block)
    }

    /// The indices of the clusters its nodes run on.
    pub fn cluster_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes.iter().map(|n| n.cluster)
    }
}

/// Labels name nodes in hop messages, metrics and the names of a
/// multi-tail response's outputs (`<label>/<output>`): kept to a
/// character set that is safe in all of them.
fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Converts the `index`th vDAG, reporting every problem found.
pub(crate) fn vdag(
    c: &mut Checker,
    index: usize,
    v: &pb::VDag,
    clusters: &HashMap<&str, usize>,
) -> Option<VDagSpec> {
    c.enter(Kind::VDag, index, &v.name);
    let problems_before = c.problem_count();
    let mut labels = HashMap::new();
    for (i, n) in v.nodes.iter().enumerate() {
        let field = format!("nodes[{i}].label");
        if !label_ok(&n.label) {
            c.problem(
                field,
                format!(
                    "{:?} is not a node label (1 to 63 of A-Z a-z 0-9 - _ .)",
                    n.label
                ),
            );
        } else if labels.insert(n.label.as_str(), i).is_some() {
            c.problem(field, format!("duplicate node label {:?}", n.label));
        }
    }
    if v.nodes.is_empty() {
        c.problem("nodes", "must not be empty");
    }
    let mut nodes = Vec::with_capacity(v.nodes.len());
    for (i, n) in v.nodes.iter().enumerate() {
        let cluster = clusters.get(n.cluster.as_str()).copied();
        if cluster.is_none() {
            c.problem(
                format!("nodes[{i}].cluster"),
                format!("no cluster named {:?}", n.cluster),
            );
        }
        if n.max_retries > MAX_RETRIES {
            c.problem(
                format!("nodes[{i}].maxRetries"),
                format!("must be at most {MAX_RETRIES}"),
            );
        }
        nodes.push(NodeSpec {
            label: n.label.clone(),
            cluster: cluster.unwrap_or_default(),
            model: if n.model.is_empty() {
                n.label.clone()
            } else {
                n.model.clone()
            },
            model_version: n.model_version.clone(),
            timeout: c.positive(&format!("nodes[{i}].timeout"), n.timeout.as_ref()),
            max_retries: n.max_retries,
            next: Vec::new(),
            previous: Vec::new(),
        });
    }

    let node = |c: &mut Checker, field: String, label: &str| -> Option<usize> {
        let found = labels.get(label).copied();
        if found.is_none() {
            c.problem(field, format!("no node labelled {label:?}"));
        }
        found
    };
    // Which edge feeds each (node, input), to refuse a second.
    let mut fed: HashMap<(usize, &str), usize> = HashMap::new();
    let mut edges = HashSet::new();
    for (i, e) in v.edges.iter().enumerate() {
        let from = node(c, format!("edges[{i}].from"), &e.from);
        let to = node(c, format!("edges[{i}].to"), &e.to);
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        if from == to {
            c.problem(
                format!("edges[{i}]"),
                "an edge may not lead back to its node",
            );
            continue;
        }
        if !edges.insert((from, to)) {
            c.problem(
                format!("edges[{i}]"),
                format!("duplicate edge from {:?} to {:?}", e.from, e.to),
            );
            continue;
        }
        let declared = &v.nodes[to].inputs;
        let mut tensors = Vec::with_capacity(e.tensors.len());
        for (j, t) in e.tensors.iter().enumerate() {
            let field = format!("edges[{i}].tensors[{j}]");
            if t.output.is_empty() {
                c.problem(format!("{field}.output"), "must not be empty");
                continue;
            }
            let input = if t.input.is_empty() {
                &t.output
            } else {
                &t.input
            };
            if !declared.is_empty() && !declared.contains(input) {
                c.problem(
                    format!("{field}.input"),
                    format!("node {:?} takes no input {input:?}", e.to),
                );
            }
            if let Some(other) = fed.insert((to, input.as_str()), i) {
                c.problem(
                    format!("{field}.input"),
                    format!(
                        "input {input:?} of node {:?} is already fed by edges[{other}]",
                        e.to
                    ),
                );
            }
            tensors.push((t.output.clone(), input.clone()));
        }
        nodes[from].next.push(EdgeSpec { to, tensors });
        nodes[to].previous.push(from);
    }

    let entry = ends(c, "entry", &v.entry, &labels);
    let tails = ends(c, "tails", &v.tails, &labels);
    for &e in &entry {
        if !nodes[e].previous.is_empty() {
            c.problem(
                "entry",
                format!(
                    "entry node {:?} is fed by an edge: entry nodes take the client's request",
                    nodes[e].label
                ),
            );
        }
    }
    for &t in &tails {
        if !nodes[t].next.is_empty() {
            c.problem(
                "tails",
                format!(
                    "tail node {:?} has edges leaving it: tails answer the client",
                    nodes[t].label
                ),
            );
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.next.is_empty() && !tails.contains(&i) && !n.label.is_empty() {
            c.problem(
                format!("nodes[{i}]"),
                format!(
                    "node {:?} leads nowhere: its output would be lost (add an edge from it \
                     or list it in tails)",
                    n.label
                ),
            );
        }
        // Inputs a listing says the model takes, and no edge feeds. An
        // edge passing every output by name may feed anything: unknown.
        let passes_all = v
            .edges
            .iter()
            .any(|e| e.to == n.label && e.tensors.is_empty());
        if !entry.contains(&i) && !passes_all {
            for input in &v.nodes[i].inputs {
                if !fed.contains_key(&(i, input.as_str())) {
                    c.problem(
                        format!("nodes[{i}].inputs"),
                        format!("no edge feeds input {input:?} of node {:?}", n.label),
                    );
                }
            }
        }
    }
    if let Some(cycle) = cycle(&nodes) {
        c.problem("edges", format!("the edges form a cycle: {cycle}"));
    }
    let reached = reachable(&nodes, &entry);
    for (i, n) in nodes.iter().enumerate() {
        if !reached[i] && !entry.is_empty() {
            c.problem(
                format!("nodes[{i}]"),
                format!("node {:?} cannot be reached from an entry node", n.label),
            );
        }
    }
    let protocol = BlockProtocol::try_from(v.protocol).unwrap_or_else(|_| {
        c.problem("protocol", format!("unknown value {}", v.protocol));
        BlockProtocol::KserveV2
    });
    if protocol == BlockProtocol::InferenceProxy {
        inference_proxy_graph(c, v, &nodes, &tails);
    }
    let timeout = c
        .positive("timeout", v.timeout.as_ref())
        .unwrap_or(DEFAULT_TIMEOUT);
    (c.problem_count() == problems_before).then(|| VDagSpec {
        name: v.name.clone(),
        version: v.version.clone(),
        nodes,
        entry,
        tails,
        timeout,
        protocol,
    })
}

/// What an INFERENCE_PROXY vDAG cannot express: its blocks forward whole
/// packets by block id to one `final`, so block ids name nodes uniquely,
/// one tail answers, and there are no tensors to map or inputs to check.
fn inference_proxy_graph(c: &mut Checker, v: &pb::VDag, nodes: &[NodeSpec], tails: &[usize]) {
    let why = "an INFERENCE_PROXY vDAG's packets pass whole from block to block";
    let mut blocks = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.model == FINAL {
            c.problem(
                format!("nodes[{i}].model"),
                format!("block id {FINAL:?} is where tails send their output"),
            );
        } else if let Some(other) = blocks.insert(n.model.as_str(), i) {
            c.problem(
                format!("nodes[{i}].model"),
                format!(
                    "block id {:?} is also nodes[{other}]'s: packets name their next node by block id",
                    n.model
                ),
            );
        }
        if !v.nodes[i].inputs.is_empty() {
            c.problem(
                format!("nodes[{i}].inputs"),
                format!("must be empty: {why}"),
            );
        }
        if !n.model_version.is_empty() {
            c.problem(
                format!("nodes[{i}].modelVersion"),
                "must be empty: InferenceProxy blocks have no model versions",
            );
        }
        // Each next hop gets its own loopback address (docs/vdag.md).
        if n.next.len() > MAX_NEXT_BLOCKS {
            c.problem(
                format!("nodes[{i}]"),
                format!("at most {MAX_NEXT_BLOCKS} edges may leave a block"),
            );
        }
    }
    for (i, e) in v.edges.iter().enumerate() {
        if !e.tensors.is_empty() {
            c.problem(
                format!("edges[{i}].tensors"),
                format!("must be empty: {why}"),
            );
        }
    }
    if tails.len() > 1 {
        c.problem(
            "tails",
            "an INFERENCE_PROXY vDAG has one tail: its blocks send their output to one final",
        );
    }
}

/// The entry or tail list: known labels, each once, at least one.
fn ends(
    c: &mut Checker,
    field: &str,
    listed: &[String],
    labels: &HashMap<&str, usize>,
) -> Vec<usize> {
    if listed.is_empty() {
        c.problem(field, "must name at least one node");
    }
    let mut out = Vec::with_capacity(listed.len());
    for (i, label) in listed.iter().enumerate() {
        match labels.get(label.as_str()) {
            None => c.problem(
                format!("{field}[{i}]"),
                format!("no node labelled {label:?}"),
            ),
            Some(&n) if out.contains(&n) => c.problem(
                format!("{field}[{i}]"),
                format!("{label:?} is listed twice"),
            ),
            Some(&n) => out.push(n),
        }
    }
    out
}

/// A cycle among `nodes` as "a -> b -> a", if there is one: after taking
/// away every node with no unvisited predecessor (Kahn), what is left lies on
/// or behind a cycle; walking back through predecessors from any of it must
/// come round.
fn cycle(nodes: &[NodeSpec]) -> Option<String> {
    let mut waiting: Vec<usize> = nodes.iter().map(|n| n.previous.len()).collect();
    let mut ready: VecDeque<usize> = (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = ready.pop_front() {
        for e in &nodes[i].next {
            waiting[e.to] -= 1;
            if waiting[e.to] == 0 {
                ready.push_back(e.to);
            }
        }
    }
    let start = waiting.iter().position(|&w| w > 0)?;
    // Every node left has a predecessor left: walk back until one repeats.
    let mut path = vec![start];
    let mut at = start;
    loop {
        at = *nodes[at].previous.iter().find(|&&p| waiting[p] > 0)?;
        if let Some(first) = path.iter().position(|&p| p == at) {
            // `at` leads to the last node walked, which leads back down
            // the path to `at` again.
            let ring = std::iter::once(at)
                .chain(path[first + 1..].iter().rev().copied())
                .chain(std::iter::once(at));
            let labels: Vec<&str> = ring.map(|i| nodes[i].label.as_str()).collect();
            return Some(labels.join(" -> "));
        }
        path.push(at);
    }
}

fn reachable(nodes: &[NodeSpec], entry: &[usize]) -> Vec<bool> {
    let mut seen = vec![false; nodes.len()];
    let mut todo: Vec<usize> = entry.to_vec();
    while let Some(i) = todo.pop() {
        if !std::mem::replace(&mut seen[i], true) {
            todo.extend(nodes[i].next.iter().map(|e| e.to));
        }
    }
    seen
}

#[cfg(test)]
mod tests;
