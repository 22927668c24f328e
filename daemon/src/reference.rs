//! Checks that a daemon's commented reference configuration (packaging/*.toml) stays in step
//! with its code: every key documented, each with its real default. Used by the daemons' tests.
use std::collections::BTreeSet;

/// The reference file with every `# key = value` line and every table header uncommented.
pub fn uncomment(reference: &str) -> String {
    reference
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_assignment(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_assignment(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

/// `table.key` for every key the uncommented reference sets.
pub fn documented_keys(reference: &str) -> BTreeSet<String> {
    let mut table = String::new();
    let mut keys = BTreeSet::new();
    for line in uncomment(reference).lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.to_owned();
        } else if is_assignment(line)
            && let Some((key, _)) = line.split_once(" = ")
        {
            keys.insert(format!("{table}.{key}"));
        }
    }
    keys
}

/// `table.key` for every field of a configuration, read off its `Debug` form (tables are the
/// fields whose values are structs).
pub fn config_keys(debug: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut path: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    let mut word = String::new();
    let mut in_string = false;
    let mut chars = debug.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            ':' if chars.peek() == Some(&' ') && !word.is_empty() => {
                pending = Some(std::mem::take(&mut word));
            }
            '{' => {
                if let Some(field) = pending.take() {
                    path.push(field);
                } else {
                    path.push(String::new());
                }
                word.clear();
            }
            '}' => {
                if let Some(field) = pending.take() {
                    record(&mut keys, &path, field);
                }
                path.pop();
                word.clear();
            }
            ',' => {
                if let Some(field) = pending.take() {
                    record(&mut keys, &path, field);
                }
                word.clear();
            }
            c if c.is_ascii_alphanumeric() || c == '_' => word.push(c),
            _ => word.clear(),
        }
    }
    keys
}

fn record(keys: &mut BTreeSet<String>, path: &[String], field: String) {
    let tables: Vec<&str> = path
        .iter()
        .filter(|p| !p.is_empty())
        .map(String::as_str)
        .collect();
    if !tables.is_empty() {
        keys.insert(format!("{}.{field}", tables.join(".")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_debug_and_from_the_reference() {
        let debug =
            r#"Config { a: A { x: 1, y: Some("b, c: d") }, m: M { listen: Some(127.0.0.1:9) } }"#;
        assert_eq!(
            config_keys(debug),
            ["a.x", "a.y", "m.listen"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        let reference =
            "# top\n[a]\n# x = 1\n# Some prose = here\n# y = \"b\"\n[m]\n# listen = \"off\"\n";
        assert_eq!(
            documented_keys(reference),
            ["a.x", "a.y", "m.listen"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
    }
}
