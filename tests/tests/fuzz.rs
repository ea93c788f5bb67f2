//! Fuzzing the parsers that take config from files and from the network,
//! as proptest properties (see gridmesh_tests::fuzz): whatever the input,
//! a parser answers with a value or a precise error, and never panics.
//!
//! - bootstrap YAML (the sidecar's file and every file of the control
//!   plane's directory go through the same loader), from a bootstrap that
//!   uses every field, edited at random;
//! - xDS resources as the sidecar and the control plane decode them: the
//!   encodings of that bootstrap's resources with random byte edits, then
//!   the validator both ends share.
//!
//! The sidecar's xDS client state, the control plane's stream state,
//! `grpc-timeout` and `config.pbtxt` have fuzz properties beside their code.

use gridmesh_config::{ConfigError, load_str, parse_bootstrap, validate_served};
use gridmesh_proto::config::Bootstrap;
use gridmesh_proto::resource::Kind;
use gridmesh_tests::fuzz::{cases, mutations_of};
use gridmesh_tests::process::workspace_root;
use pbjson_types::Any;
use proptest::prelude::*;

fn seed() -> String {
    std::fs::read_to_string(workspace_root().join("tests/fuzz/bootstrap.yaml"))
        .expect("the fuzz seed")
}

/// Every example too: they are what users copy.
fn seeds() -> Vec<String> {
    let examples = workspace_root().join("examples");
    let mut seeds = vec![seed()];
    for dir in [examples.clone(), examples.join("mesh")] {
        for entry in std::fs::read_dir(dir).expect("examples") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                seeds.push(std::fs::read_to_string(path).expect("an example"));
            }
        }
    }
    seeds
}

/// A rejection says where and what: the source, and for every problem a
/// resource, a field and a message, all in the text shown to users.
fn assert_explained(error: &ConfigError, source: &str) {
    assert_eq!(error.source, source);
    assert!(!error.problems.is_empty(), "an error without problems");
    let text = error.to_string();
    assert!(text.contains(source), "{text}");
    for p in &error.problems {
        assert!(
            !p.resource.trim().is_empty() && !p.field.trim().is_empty(),
            "{p:?}"
        );
        assert!(!p.message.trim().is_empty(), "no message: {p:?}");
    }
}

#[test]
fn the_seed_is_valid() {
    // Otherwise the properties below would only ever see rejections.
    load_str(&seed(), "seed.yaml").unwrap_or_else(|e| panic!("{e}"));
}

proptest! {
    #![proptest_config(cases(2_000))]

    #[test]
    fn fuzz_bootstrap_yaml_is_loaded_or_explained(text in mutations_of(seeds())) {
        if let Err(error) = load_str(&text, "fuzz.yaml") {
            assert_explained(&error, "fuzz.yaml");
        }
    }
}

/// One resource's encoding with byte edits: flips, insertions, deletions.
fn mutated_resources() -> impl Strategy<Value = (Kind, Any)> {
    let set = parse_bootstrap(&seed(), "seed.yaml").expect("the seed parses");
    let encoded: Vec<(Kind, Any)> = Kind::PUSH_ORDER
        .into_iter()
        .flat_map(|kind| kind.pack(&set).into_iter().map(move |(_, any)| (kind, any)))
        .collect();
    let edits = prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8);
    (prop::sample::select(encoded), edits).prop_map(|((kind, mut any), edits)| {
        let mut bytes = any.value.to_vec();
        for (at, byte, how) in edits {
            let at = at % (bytes.len() + 1);
            match how {
                0 if at < bytes.len() => bytes[at] ^= byte | 1,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.push(byte),
            }
        }
        any.value = bytes.into();
        (kind, any)
    })
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// What a sidecar does with a resource from the control plane, and
    /// the control plane with a resource from its directory: decode it
    /// into the set, then validate the set.
    #[test]
    fn fuzz_xds_resources_decode_and_validate_or_explain((kind, any) in mutated_resources()) {
        let mut set = Bootstrap::default();
        match kind.unpack_into(&any, &mut set) {
            Ok(_) => {
                if let Err(error) = validate_served(set, "xds") {
                    assert_explained(&error, "xds");
                }
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }
}
