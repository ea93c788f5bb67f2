//! The dependency policy `cargo xtask test` enforces, over what this host
//! builds (`cargo metadata --filter-platform`):
//!
//! - every licence expression must be satisfiable from [`ALLOWED_LICENSES`]
//!   (an `OR` needs one allowed side, an `AND` both);
//! - a crate in two versions costs build time and binary size: only the
//!   pairs in [`KNOWN_DUPLICATES`], each pulled in by a dependency we do not
//!   control, may stay; a new one fails until it is removed or listed with
//!   its reason.
//!
//! - the configuration model (gridmesh-config) pulls in no runtime: the
//!   control plane links it instead of the sidecar, and it must stay that
//!   small.
//!
//! The first two are what `cargo deny check licenses bans` would do,
//! without building cargo-deny (minutes on the CI's two cores) for them.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cargo;

/// Licences whose terms gridmesh (Apache-2.0) can ship under.
const ALLOWED_LICENSES: &[&str] = &[
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "MIT",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "0BSD",
    "ISC",
    "Zlib",
    "Unicode-3.0",
    "CC0-1.0",
    "BSL-1.0",
    "Unlicense",
];

/// Crates allowed in two versions, and why.
const KNOWN_DUPLICATES: &[(&str, &str)] = &[
    (
        "rand",
        "tch 0.26 uses rand 0.8, opentelemetry_sdk 0.33 (trace and span ids) 0.9; hickory and we use 0.10",
    ),
    (
        "rand_core",
        "with rand: tch's 0.8, opentelemetry_sdk's 0.9 and everyone else's 0.10",
    ),
    (
        "rand_chacha",
        "with rand: tch's 0.8 and opentelemetry_sdk's 0.9",
    ),
    (
        "getrandom",
        "with rand_core: 0.6 (tch, zip) and 0.10 use different getrandoms",
    ),
    (
        "thiserror",
        "tch 0.26 is on thiserror 1; everything else on 2",
    ),
    ("thiserror-impl", "with thiserror"),
    (
        "cpufeatures",
        "zip (tch's build script) pins sha2/aes on 0.2; chacha20 (rand 0.10) is on 0.3",
    ),
    (
        "hashbrown",
        "petgraph (prost-build, build time only) is on 0.15; the rest on 0.17",
    ),
    (
        "syn",
        "async-trait (hickory) moved to syn 3; other macros are on 2",
    ),
    (
        "synstructure",
        "x509-parser's asn1-rs-derive is on 0.13; icu's yoke-derive and zerofrom-derive on 0.14",
    ),
];

/// Crates that must not depend on a runtime, and what counts as one.
const RUNTIME_FREE: &[&str] = &["gridmesh-config"];
const RUNTIME: &[&str] = &["tokio", "hyper", "tonic", "h2"];

pub fn check() -> Result<()> {
    for krate in RUNTIME_FREE {
        let output = cargo()
            .args([
                "tree", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p",
            ])
            .arg(krate)
            .output()
            .context("cannot run cargo tree")?;
        if !output.status.success() {
            bail!(
                "cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&output.stdout);
        let runtime: BTreeSet<&str> = tree
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| RUNTIME.contains(name))
            .collect();
        if !runtime.is_empty() {
            bail!("{krate} must not depend on a runtime, but pulls in {runtime:?}");
        }
    }
    let host = host_triple()?;
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(&host)
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata's JSON")?;
    let problems = problems(&metadata);
    if !problems.is_empty() {
        bail!(
            "the dependency policy (xtask/src/dependencies.rs) is broken:\n  {}",
            problems.join("\n  ")
        );
    }
    println!(
        "dependencies: licences allowed, no new duplicate versions, {} free of a runtime",
        RUNTIME_FREE.join(", ")
    );
    Ok(())
}

fn host_triple() -> Result<String> {
    let output = std::process::Command::new(std::env::var_os("RUSTC").unwrap_or("rustc".into()))
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

/// Every broken rule, one line each.
fn problems(metadata: &Value) -> Vec<String> {
    let resolved: HashSet<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|node| node["id"].as_str())
        .collect();
    let workspace: HashSet<&str> = metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut problems = Vec::new();
    let mut versions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let id = package["id"].as_str().unwrap_or_default();
        if !resolved.contains(id) || workspace.contains(id) {
            continue;
        }
        let name = package["name"].as_str().unwrap_or_default();
        let version = package["version"].as_str().unwrap_or_default();
        versions.entry(name).or_default().insert(version);
        match package["license"].as_str() {
            Some(expression) if license_allowed(expression) => {}
            Some(expression) => problems.push(format!(
                "{name} {version}: licence {expression:?} is not allowed"
            )),
            None => problems.push(format!("{name} {version}: no SPDX licence expression")),
        }
    }
    for (name, found) in versions.iter().filter(|(_, v)| v.len() > 1) {
        if !KNOWN_DUPLICATES.iter().any(|(known, _)| known == name) {
            let found: Vec<&str> = found.iter().copied().collect();
            problems.push(format!(
                "{name} is built in {} versions ({}): remove one, or list it with its reason",
                found.len(),
                found.join(", ")
            ));
        }
    }
    for (known, reason) in KNOWN_DUPLICATES {
        if versions.get(known).is_none_or(|v| v.len() < 2) {
            problems.push(format!(
                "{known} is no longer duplicated ({reason}): take it off the list"
            ));
        }
    }
    problems
}

/// Whether an SPDX expression (as crates write them: `A OR B`, `A/B`,
/// `A AND B`, parentheses, `A WITH exception`) can be met with allowed
/// licences. `AND` binds tighter than `OR`.
fn license_allowed(expression: &str) -> bool {
    let tokens: Vec<String> = expression
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut position = 0;
    let allowed = any_of(&tokens, &mut position);
    allowed == Some(true) && position == tokens.len()
}

/// `None`: not a well-formed expression.
fn any_of(tokens: &[String], position: &mut usize) -> Option<bool> {
    let mut allowed = all_of(tokens, position)?;
    while tokens.get(*position).is_some_and(|t| t == "OR") {
        *position += 1;
        allowed |= all_of(tokens, position)?;
    }
    Some(allowed)
}

fn all_of(tokens: &[String], position: &mut usize) -> Option<bool> {
    let mut allowed = one(tokens, position)?;
    while tokens.get(*position).is_some_and(|t| t == "AND") {
        *position += 1;
        allowed &= one(tokens, position)?;
    }
    Some(allowed)
}

fn one(tokens: &[String], position: &mut usize) -> Option<bool> {
    let token = tokens.get(*position)?;
    *position += 1;
    if token == "(" {
        let allowed = any_of(tokens, position)?;
        if tokens.get(*position).is_none_or(|t| t != ")") {
            return None;
        }
        *position += 1;
        return Some(allowed);
    }
    if ["OR", "AND", "WITH", ")"].contains(&token.as_str()) {
        return None;
    }
    let mut license = token.clone();
    if tokens.get(*position).is_some_and(|t| t == "WITH") {
        license = format!("{license} WITH {}", tokens.get(*position + 1)?);
        *position += 2;
    }
    Some(ALLOWED_LICENSES.contains(&license.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licence_expressions_as_crates_write_them() {
        for allowed in [
            "MIT",
            "MIT OR Apache-2.0",
            "MIT/Apache-2.0",
            "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
            "(MIT OR Apache-2.0) AND Unicode-3.0",
            "MIT OR Apache-2.0 OR LGPL-2.1-or-later",
            "Unlicense/MIT",
        ] {
            assert!(license_allowed(allowed), "{allowed}");
        }
        for refused in [
            "GPL-3.0",
            "MIT AND GPL-3.0",
            "(MIT OR Apache-2.0) AND LGPL-2.1-or-later",
            "GPL-2.0 WITH Classpath-exception-2.0",
            "",
            "(MIT",
            "MIT OR",
        ] {
            assert!(!license_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn new_duplicates_and_stale_exceptions_are_reported() {
        let package = |name: &str, version: &str| {
            serde_json::json!({
                "id": format!("{name}@{version}"), "name": name, "version": version,
                "license": "MIT",
            })
        };
        let mut packages: Vec<Value> = KNOWN_DUPLICATES
            .iter()
            .flat_map(|(name, _)| [package(name, "1.0.0"), package(name, "2.0.0")])
            .collect();
        packages.extend([package("left-pad", "1.0.0"), package("left-pad", "1.1.0")]);
        let nodes: Vec<Value> = packages
            .iter()
            .map(|p| serde_json::json!({ "id": p["id"] }))
            .collect();
        let mut metadata = serde_json::json!({
            "packages": packages, "workspace_members": [], "resolve": { "nodes": nodes },
        });
        assert_eq!(
            problems(&metadata),
            [
                "left-pad is built in 2 versions (1.0.0, 1.1.0): remove one, or list it with its reason"
            ]
        );
        // A listed duplicate that went away must be taken off the list.
        let packages = metadata["packages"].as_array_mut().unwrap();
        packages.retain(|p| !(p["name"] == "syn" && p["version"] == "2.0.0"));
        assert!(
            problems(&metadata)
                .iter()
                .any(|p| p.starts_with("syn is no longer duplicated")),
            "{:?}",
            problems(&metadata)
        );
    }
}
