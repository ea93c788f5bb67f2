//! Prometheus text exposition as the tests, the demo and the benchmark read
//! it: one parser. A series that is absent reads as `None`, never as 0, so
//! a test expecting a counter at zero fails when the counter is missing or
//! renamed instead of passing by accident.

use std::fmt;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sample carries every one of `labels` (and maybe more).
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A line that is not valid text exposition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub text: String,
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metrics line {}: {}: {:?}",
            self.line, self.reason, self.text
        )
    }
}

impl std::error::Error for ParseError {}

/// Every sample in `text`, in order; comments and blank lines skipped.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| {
            parse_line(line).map_err(|reason| ParseError {
                line: index + 1,
                text: line.to_string(),
                reason,
            })
        })
        .collect()
}

/// The value of the first sample of `name` that carries `labels`, or
/// `None` when there is none. Panics on text that does not parse: a test
/// reading metrics wants to know the exposition is broken.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
}

/// The sum of the samples of `name` that carry `labels` (e.g. over every
/// model), or `None` when there is none. Panics on text that does not parse.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

fn samples(text: &str) -> Vec<Sample> {
    parse(text).unwrap_or_else(|e| panic!("{e}\n--- metrics ---\n{text}"))
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"").ok_or("a label without a value")?;
            let (value, after) = label_value(after)?;
            labels.push((key.trim().to_string(), value));
            rest = after.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = value
        .parse::<f64>()
        .map_err(|_| "the value is not a number")?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A quoted label value up to its closing quote, unescaped; and the rest.
fn label_value(text: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[index + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("an unterminated label value")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP gridmesh_requests_total Requests.
# TYPE gridmesh_requests_total counter
gridmesh_requests_total{listener="in",code="200"} 7
gridmesh_requests_total{listener="in",code="503"} 2
gridmesh_requests_total_extra 99
gridmesh_up 1
gridmesh_odd{msg="a \"quoted\", comma\\ and\nline",} +Inf 1700000000
"#;

    #[test]
    fn reads_samples_with_and_without_labels() {
        assert_eq!(
            value(TEXT, "gridmesh_requests_total", &[("code", "503")]),
            Some(2.0)
        );
        assert_eq!(value(TEXT, "gridmesh_up", &[]), Some(1.0));
        assert_eq!(
            sum(TEXT, "gridmesh_requests_total", &[("listener", "in")]),
            Some(9.0)
        );
        let odd = &parse(TEXT).unwrap()[4];
        assert_eq!(odd.label("msg"), Some("a \"quoted\", comma\\ and\nline"));
        assert_eq!(odd.value, f64::INFINITY);
    }

    #[test]
    fn an_absent_series_is_none_not_zero() {
        assert_eq!(
            value(TEXT, "gridmesh_requests_total", &[("code", "404")]),
            None
        );
        assert_eq!(value(TEXT, "gridmesh_requests", &[]), None);
        assert_eq!(sum(TEXT, "gridmesh_missing", &[]), None);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "m{a=\"1\" 2",
            "m{a=\"1} 2",
            "m{a} 2",
            "m{a=\"1\"}",
            "m x",
            "{a=\"1\"} 2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
