//! The layers applied to the parsed TOML tree before it becomes `Settings`:
//! `${VAR}` references, then `DATABASE_URL`, then `APISYNC__SECTION__KEY`.
//!
//! We do this on the `toml` tree ourselves rather than through the `config`
//! crate because that crate lowercases map keys (config-rs issue #577), which
//! would turn a query parameter `pageSize` into `pagesize`, and because its
//! errors cannot name the job a bad key belongs to.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde_path_to_error::{Path as SerdePath, Segment};

const ENV_PREFIX: &str = "APISYNC__";
const ENV_SEPARATOR: &str = "__";

/// One step into the TOML tree, for messages.
#[derive(Clone)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The `name` of each `[[jobs]]` entry by position, where it is a string.
pub(super) fn job_names(table: &toml::Table) -> Vec<Option<String>> {
    match table.get("jobs") {
        Some(toml::Value::Array(jobs)) => jobs
            .iter()
            .map(|job| job.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Replaces every `${NAME}` in string values with the variable's value,
/// collecting the values (they are treated as secrets) and a problem for each
/// variable that is not set.
///
/// `${file:PATH}` is replaced by the file's content, one trailing newline
/// trimmed (systemd's `LoadCredential=`, Docker secrets), and is a secret
/// too. PATH may itself hold `${VAR}` (`${file:${CREDENTIALS_DIRECTORY}/token}`);
/// a relative PATH is read from `base`, the configuration file's folder.
pub(super) fn expand_variables(
    table: &mut toml::Table,
    env: &HashMap<String, String>,
    base: &Path,
    secrets: &mut Vec<String>,
    job_names: &[Option<String>],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut path = Vec::new();
    let sources = Sources { env, base };
    for (key, value) in table.iter_mut() {
        path.push(Step::Key(key));
        expand_value(
            value,
            &sources,
            secrets,
            &mut path,
            job_names,
            &mut problems,
        );
        path.pop();
    }
    problems
}

/// Where `${…}` references are read from.
struct Sources<'a> {
    env: &'a HashMap<String, String>,
    /// Relative `${file:…}` paths start here.
    base: &'a Path,
}

fn expand_value<'a>(
    value: &'a mut toml::Value,
    env: &Sources<'_>,
    secrets: &mut Vec<String>,
    path: &mut Vec<Step<'a>>,
    job_names: &[Option<String>],
    problems: &mut Vec<String>,
) {
    match value {
        toml::Value::String(text) => match expand_str(text, env) {
            Ok(Some((expanded, values))) => {
                *text = expanded;
                secrets.extend(values);
            }
            Ok(None) => {}
            Err(problem) => problems.push(format!("{}{problem}", place(path, job_names))),
        },
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(Step::Index(index));
                expand_value(item, env, secrets, path, job_names, problems);
                path.pop();
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                path.push(Step::Key(key));
                expand_value(item, env, secrets, path, job_names, problems);
                path.pop();
            }
        }
        _ => {}
    }
}

/// `Ok(None)` when `text` references no variable; else the expanded text and
/// the values that went into it.
fn expand_str(text: &str, sources: &Sources<'_>) -> Result<Option<(String, Vec<String>)>, String> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut values = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        if let Some(reference) = after.strip_prefix("file:") {
            let end = closing_brace(reference)
                .ok_or_else(|| "`${file:` without a closing `}`".to_owned())?;
            let value = read_file_reference(&reference[..end], sources)?;
            out.push_str(&value);
            values.push(value);
            rest = &reference[end + 1..];
            continue;
        }
        let end = after
            .find('}')
            .ok_or_else(|| "`${` without a closing `}`".to_owned())?;
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("`${{{name}}}` is not a valid variable reference"));
        }
        let value = sources
            .env
            .get(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(value);
        values.push(value.clone());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some((out, values)))
}

/// The most a `${file:…}` file may hold: a secret, not a data file (and never
/// `/dev/zero` read to the end).
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The index of the `}` that closes a reference whose text starts `text`,
/// counting the `${…}` nested in it.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' if i > 0 && bytes[i - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The content of the file a `${file:PATH}` names, one trailing newline
/// (`\n` or `\r\n`) trimmed: editors and `echo` add one, and a secret with
/// a newline in it would be refused as a header value.
fn read_file_reference(path: &str, sources: &Sources<'_>) -> Result<String, String> {
    let path = match expand_str(path, sources)? {
        Some((expanded, _)) => expanded,
        None => path.to_owned(),
    };
    if path.trim().is_empty() {
        return Err("`${file:}` names no file".to_owned());
    }
    let full = sources.base.join(&path);
    let cannot = |e: &dyn std::fmt::Display| {
        format!(
            "cannot read the file {} that `${{file:…}}` names: {e}",
            full.display()
        )
    };
    let mut text = String::new();
    std::fs::File::open(&full)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| cannot(&e))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(cannot(&format!(
            "it is larger than {} KiB, which no secret is",
            MAX_FILE_BYTES / 1024
        )));
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// The keys set from the environment, and by which variable, so that a
/// problem with one names the variable rather than the file.
#[derive(Debug, Default)]
pub(super) struct EnvOverrides {
    /// `(variable, dotted key)`, in the order applied: a later one wins.
    set: Vec<(String, String)>,
}

impl EnvOverrides {
    /// The variable that set `key`, a section holding it, or a key inside
    /// it (`APISYNC__DATABSE__URL` made the section `databse` that a
    /// problem about `databse` names).
    pub(super) fn source_of(&self, key: &str) -> Option<&str> {
        let within = |outer: &str, inner: &str| {
            inner == outer
                || inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        self.set
            .iter()
            .rev()
            .find(|(_, set)| within(key, set) || within(set, key))
            .map(|(name, _)| name.as_str())
    }

    /// `environment variable NAME (key "KEY"): ` when the environment set
    /// `key`, else `key "KEY": `.
    pub(super) fn place(&self, key: &str) -> String {
        match self.source_of(key) {
            Some(name) => format!("environment variable {name} (key \"{key}\"): "),
            None => format!("key \"{key}\": "),
        }
    }
}

/// Where `database.url` will come from once [`apply_env_overrides`] ran on
/// `table` (the file as parsed): the last layer that sets it.
pub(super) fn url_origin(
    table: &toml::Table,
    file: &std::path::Path,
    env: &HashMap<String, String>,
) -> super::UrlOrigin {
    // The last of the variables spelling database.url, as the overrides
    // apply them in sorted order.
    let apisync = env
        .keys()
        .filter(|name| {
            name.strip_prefix(ENV_PREFIX).is_some_and(|rest| {
                rest.split(ENV_SEPARATOR)
                    .map(str::to_ascii_lowercase)
                    .eq(["database", "url"])
            })
        })
        .max();
    if let Some(name) = apisync {
        super::UrlOrigin::Env(name.clone())
    } else if env.get("DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        super::UrlOrigin::Env("DATABASE_URL".to_owned())
    } else if table
        .get("database")
        .and_then(|database| database.get("url"))
        .is_some()
    {
        super::UrlOrigin::File(file.to_path_buf())
    } else {
        super::UrlOrigin::Default
    }
}

/// Applies `DATABASE_URL` and then every `APISYNC__SECTION__KEY` variable.
pub(super) fn apply_env_overrides(
    table: &mut toml::Table,
    env: &HashMap<String, String>,
    applied: &mut EnvOverrides,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(url) = env.get("DATABASE_URL").filter(|url| !url.is_empty()) {
        match set_path(table, &["database", "url"], url.clone()) {
            Ok(()) => applied
                .set
                .push(("DATABASE_URL".to_owned(), "database.url".to_owned())),
            Err(problem) => problems.push(format!("environment variable DATABASE_URL: {problem}")),
        }
    }
    // Sorted so that the outcome does not depend on the map's order.
    let mut overrides: Vec<_> = env
        .iter()
        .filter_map(|(name, value)| Some((name, name.strip_prefix(ENV_PREFIX)?, value)))
        .collect();
    overrides.sort();
    for (name, rest, value) in overrides {
        let keys: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            problems.push(format!(
                "environment variable {name}: expected APISYNC__SECTION__KEY"
            ));
            continue;
        }
        if keys[0] == "jobs" {
            problems.push(format!(
                "environment variable {name}: jobs cannot be set from the environment; \
                 reference variables as ${{VAR}} in the file instead"
            ));
            continue;
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        match set_path(table, &keys, value.clone()) {
            Ok(()) => applied.set.push((name.clone(), keys.join("."))),
            Err(problem) => problems.push(format!("environment variable {name}: {problem}")),
        }
    }
    problems
}

fn set_path(table: &mut toml::Table, keys: &[&str], value: String) -> Result<(), String> {
    let (last, parents) = keys.split_last().expect("at least one key");
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("`{key}` is not a section")),
        };
    }
    current.insert(last.to_string(), toml::Value::String(value));
    Ok(())
}

/// Where a deserialization error happened, as `job "products", key "request.foo": `.
pub(super) fn describe_path(path: &SerdePath, job_names: &[Option<String>]) -> String {
    let steps: Vec<Step> = path
        .iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(Step::Key(key)),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect();
    place(&steps, job_names)
}

/// Removes `field` from the table at `path` (or from the table the path's
/// last key names, whichever holds it); whether it was there.
pub(super) fn remove_key(table: &mut toml::Table, path: &SerdePath, field: &str) -> bool {
    let mut steps: Vec<Step> = path
        .iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(Step::Key(key)),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect();
    if matches!(steps.last(), Some(Step::Key(key)) if *key == field) {
        steps.pop();
    }
    remove_at(table, &steps, field)
}

fn remove_at(table: &mut toml::Table, steps: &[Step], field: &str) -> bool {
    match steps.split_first() {
        None => table.remove(field).is_some(),
        Some((Step::Key(key), rest)) => match table.get_mut(*key) {
            Some(toml::Value::Table(inner)) => remove_at(inner, rest, field),
            Some(toml::Value::Array(items)) => match rest.split_first() {
                Some((Step::Index(index), rest)) => match items.get_mut(*index) {
                    Some(toml::Value::Table(inner)) => remove_at(inner, rest, field),
                    _ => false,
                },
                _ => false,
            },
            _ => false,
        },
        Some((Step::Index(_), _)) => false,
    }
}

/// The key a deserialization error is about, without its job and indices:
/// `retry.max_attempts`, `pagination.end_on_status`.
pub(super) fn key_of(path: &SerdePath) -> String {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    match keys.as_slice() {
        ["jobs", rest @ ..] => rest.join("."),
        all => all.join("."),
    }
}

fn place(path: &[Step], job_names: &[Option<String>]) -> String {
    let (job, rest) = match path {
        [Step::Key("jobs"), Step::Index(index), rest @ ..] => {
            let job = match job_names.get(*index) {
                Some(Some(name)) => format!("job \"{name}\""),
                _ => format!("job #{}", index + 1),
            };
            (Some(job), rest)
        }
        _ => (None, path),
    };
    let key = rest
        .iter()
        .map(|step| match step {
            Step::Key(key) => (*key).to_owned(),
            Step::Index(index) => format!("[{index}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
        .replace(".[", "[");
    match (job, key.is_empty()) {
        (Some(job), true) => format!("{job}: "),
        (Some(job), false) => format!("{job}, key \"{key}\": "),
        (None, true) => String::new(),
        (None, false) => format!("key \"{key}\": "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sources(env: &HashMap<String, String>) -> Sources<'_> {
        Sources {
            env,
            base: Path::new("."),
        }
    }

    #[test]
    fn file_references_read_the_file_and_trim_one_newline() {
        let dir = std::env::temp_dir().join(format!("apisync-file-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), "s3cret-value\n\n").unwrap();
        std::fs::write(dir.join("crlf"), "other\r\n").unwrap();
        let env = env(&[("CREDS", dir.to_str().unwrap())]);
        let sources = Sources {
            env: &env,
            base: &dir,
        };
        let (text, values) = expand_str("Bearer ${file:secret}", &sources)
            .unwrap()
            .unwrap();
        assert_eq!(
            text, "Bearer s3cret-value\n",
            "one newline trimmed, not two"
        );
        assert_eq!(values, vec!["s3cret-value\n"]);
        let (text, _) = expand_str("${file:${CREDS}/crlf}!", &sources)
            .unwrap()
            .unwrap();
        assert_eq!(text, "other!");
        std::fs::write(dir.join("huge"), vec![b'x'; 70 * 1024]).unwrap();
        let huge = expand_str("${file:huge}", &sources).unwrap_err();
        assert!(huge.contains("larger than 64 KiB"), "{huge}");
        let missing = expand_str("${file:nope}", &sources).unwrap_err();
        assert!(
            missing.contains("cannot read the file") && missing.contains("nope"),
            "{missing}"
        );
        assert_eq!(
            expand_str("${file:secret", &sources).unwrap_err(),
            "`${file:` without a closing `}`"
        );
        assert_eq!(
            expand_str("${file:}", &sources).unwrap_err(),
            "`${file:}` names no file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn variables_expand_and_are_collected_as_secrets() {
        let env = env(&[("TOKEN", "s3cret"), ("HOST", "api.test")]);
        let (text, values) = expand_str("https://${HOST}/?t=${TOKEN}", &sources(&env))
            .unwrap()
            .unwrap();
        assert_eq!(text, "https://api.test/?t=s3cret");
        assert_eq!(values, vec!["api.test", "s3cret"]);
        assert!(
            expand_str("no reference", &sources(&env))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_references_are_reported() {
        let env = env(&[]);
        let cases = [
            ("${MISSING}", "environment variable MISSING is not set"),
            ("${OPEN", "`${` without a closing `}`"),
            ("${1X}", "`${1X}` is not a valid variable reference"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                expand_str(text, &sources(&env)).unwrap_err(),
                expected,
                "case {text}"
            );
        }
    }

    #[test]
    fn env_overrides_nest_and_keep_strings() {
        let mut table: toml::Table = "[database]\nurl = \"postgres://file\"\n".parse().unwrap();
        let problems = apply_env_overrides(
            &mut table,
            &env(&[
                ("APISYNC__DATABASE__MAX_CONNECTIONS", "9"),
                ("APISYNC__LOG__LEVEL", "debug"),
                ("DATABASE_URL", "postgres://env"),
            ]),
            &mut EnvOverrides::default(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(table["database"]["url"].as_str(), Some("postgres://env"));
        assert_eq!(table["database"]["max_connections"].as_str(), Some("9"));
        assert_eq!(table["log"]["level"].as_str(), Some("debug"));
    }

    #[test]
    fn apisync_database_url_beats_database_url() {
        let mut table = toml::Table::new();
        apply_env_overrides(
            &mut table,
            &env(&[
                ("APISYNC__DATABASE__URL", "postgres://apisync"),
                ("DATABASE_URL", "postgres://generic"),
            ]),
            &mut EnvOverrides::default(),
        );
        assert_eq!(
            table["database"]["url"].as_str(),
            Some("postgres://apisync")
        );
    }

    #[test]
    fn jobs_cannot_be_overridden_from_env() {
        let mut table = toml::Table::new();
        let problems = apply_env_overrides(
            &mut table,
            &env(&[("APISYNC__JOBS__NAME", "x")]),
            &mut EnvOverrides::default(),
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("APISYNC__JOBS__NAME"), "{problems:?}");
    }

    #[test]
    fn a_key_set_from_the_environment_names_its_variable() {
        let mut table = toml::Table::new();
        let mut overrides = EnvOverrides::default();
        apply_env_overrides(
            &mut table,
            &env(&[
                ("APISYNC__DATABSE__URL", "x"),
                ("APISYNC__LOG__LEVEL", "debug"),
                ("DATABASE_URL", "postgres://env"),
            ]),
            &mut overrides,
        );
        assert_eq!(
            overrides.source_of("databse"),
            Some("APISYNC__DATABSE__URL")
        );
        assert_eq!(
            overrides.source_of("databse.url"),
            Some("APISYNC__DATABSE__URL")
        );
        assert_eq!(overrides.source_of("database.url"), Some("DATABASE_URL"));
        assert_eq!(
            overrides.source_of("log.level"),
            Some("APISYNC__LOG__LEVEL")
        );
        assert_eq!(overrides.source_of("log.format"), None);
        assert_eq!(overrides.source_of("data"), None);
        assert_eq!(
            overrides.place("log.level"),
            "environment variable APISYNC__LOG__LEVEL (key \"log.level\"): "
        );
        assert_eq!(overrides.place("log.format"), "key \"log.format\": ");
    }
}
