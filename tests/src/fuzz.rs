//! What the fuzz tests share: how many cases to run, and inputs near valid
//! ones. They are proptest properties, so `cargo xtask test` runs each for a
//! bounded number of cases (about a second); `GRIDMESH_FUZZ_CASES=100000`
//! runs them longer by hand. Random bytes rarely get past a parser's first
//! check, so most inputs are valid documents with a few random edits: the
//! edits land deep inside the structure, where parsers have the most
//! states.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// A proptest config running `default` cases, or `GRIDMESH_FUZZ_CASES`
/// when set. Failures are not persisted to files: the seed is in the
/// failure message.
pub fn cases(default: u32) -> Config {
    let cases = std::env::var("GRIDMESH_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// One edit of a document.
#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Duplicate { at: usize, len: usize },
    Replace { at: usize, text: String },
}

/// Text that means something to YAML, JSON and protobuf text format, and
/// some that means nothing to them.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "'",
            "\n",
            "  ",
            "- ",
            "#",
            "&a",
            "*a",
            "!!str ",
            "|",
            ">",
            "~",
            "null",
            "true",
            "-1",
            "1e999",
            "0x1F",
            "9999999999999999999999",
            "\\u0000",
            "é",
            "\u{1F600}",
            "\t",
            "<<: ",
            "---\n",
            "...\n",
            "0.25s",
            "-2s",
            "1s",
            "ms",
            "nan",
            "inf",
            "@",
            "%",
            "\r\n",
            "\0",
        ])
        .prop_map(str::to_string),
        "[ -~]{1,8}",
        any::<char>().prop_map(String::from),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), fragment()).prop_map(|(at, text)| Edit::Insert { at, text }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Duplicate { at, len }),
        (any::<usize>(), fragment()).prop_map(|(at, text)| Edit::Replace { at, text }),
    ]
}

/// One of `seeds` with one to six random edits applied.
pub fn mutations_of(seeds: Vec<String>) -> impl Strategy<Value = String> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 1..7),
    )
        .prop_map(|(seed, edits)| edits.iter().fold(seed, apply))
}

fn apply(text: String, edit: &Edit) -> String {
    let chars: Vec<char> = text.chars().collect();
    let position = |at: usize| {
        if chars.is_empty() {
            0
        } else {
            at % (chars.len() + 1)
        }
    };
    let slice = |from: usize, to: usize| {
        let from = from.min(chars.len());
        chars[from..to.clamp(from, chars.len())].iter().collect()
    };
    let (head, insert, tail): (String, String, String) = match edit {
        Edit::Delete { at, len } => {
            let at = position(*at);
            (slice(0, at), String::new(), slice(at + len, chars.len()))
        }
        Edit::Insert { at, text } => {
            let at = position(*at);
            (slice(0, at), text.clone(), slice(at, chars.len()))
        }
        Edit::Duplicate { at, len } => {
            let at = position(*at);
            (
                slice(0, at + len),
                slice(at, at + len),
                slice(at + len, chars.len()),
            )
        }
        Edit::Replace { at, text } => {
            let at = position(*at);
            (slice(0, at), text.clone(), slice(at + 1, chars.len()))
        }
    };
    head + &insert + &tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_anywhere_including_the_ends() {
        let text = "abc".to_string();
        let delete = Edit::Delete { at: 1, len: 5 };
        assert_eq!(apply(text.clone(), &delete), "a");
        let insert = Edit::Insert {
            at: 3,
            text: "Z".into(),
        };
        assert_eq!(apply(text.clone(), &insert), "abcZ");
        let duplicate = Edit::Duplicate { at: 1, len: 1 };
        assert_eq!(apply(text.clone(), &duplicate), "abbc");
        let replace = Edit::Replace {
            at: 7,
            text: "Y".into(),
        };
        // 7 % 4 = 3: past the end, so nothing is replaced, Y appended.
        assert_eq!(apply(text, &replace), "abcY");
        assert_eq!(apply(String::new(), &delete), "");
    }
}
