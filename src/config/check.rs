//! What every stage and section shares: [`Findings`], which collects problems and warnings,
//! and its readers for the kinds of value a file holds (durations, whole numbers and fractions
//! in a range, catalogue commands, small files).
//!
//! Promises: at most one problem per key (the first is the root cause); a reader that refuses
//! a value records why under the value's key and returns a fallback, so checking carries on;
//! every key and message is stripped of key-like hex runs before it leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::io::Read as _;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use super::model::{Config, ConfigError, Loaded, Problem, ENV_PREFIX, ENV_SEPARATOR};
use crate::catalogue::{Catalogue, CommandSpec};

/// What a duration key accepts unless it says otherwise: positive, and at most a year (far
/// beyond any sensible setting, and far from where adding it to an instant could overflow).
pub(super) const POSITIVE: RangeInclusive<Duration> =
    Duration::from_nanos(1)..=Duration::from_secs(365 * 86_400);

/// Problems and warnings found so far, plus which keys were set by the environment (so a
/// problem can say which variable to fix).
#[derive(Default)]
pub(super) struct Findings {
    problems: BTreeMap<String, String>,
    warnings: BTreeMap<String, String>,
    from_env: BTreeSet<String>,
}

impl Findings {
    /// Records a problem, unless `key` already has one (its first problem is the root cause).
    pub fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems
            .entry(key.into())
            .or_insert_with(|| message.into());
    }

    /// Records a problem and returns `None`: the value under `key` is refused.
    pub fn refuse<T>(&mut self, key: impl Into<String>, message: impl Into<String>) -> Option<T> {
        self.problem(key, message);
        None
    }

    pub fn warning(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings
            .entry(key.into())
            .or_insert_with(|| message.into());
    }

    /// Whether `key` already has a problem (such as a value of the wrong type, dropped).
    pub fn has_problem(&self, key: &str) -> bool {
        self.problems.contains_key(key)
    }

    /// Remembers that the environment set `key`. Only environment values carry an origin:
    /// the file is read from a string, and tables the overrides create have none.
    pub fn note_origin(&mut self, key: &str, value: &::config::Value) {
        if value.origin().is_some() {
            self.from_env.insert(key.to_owned());
        }
    }

    /// The loaded configuration, or every problem found.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when any problem was recorded (or `config` is `None`).
    pub fn finish(self, config: Option<Config>) -> Result<Loaded, ConfigError> {
        let from_env = &self.from_env;
        let to_problems = |map: BTreeMap<String, String>| -> Vec<Problem> {
            map.into_iter()
                .map(|(key, mut message)| {
                    if from_env.contains(&key) {
                        message.push_str(&format!(" (set by {})", env_var_name(&key)));
                    }
                    Problem {
                        key: redact_key_like(&key),
                        message: redact_key_like(&message),
                    }
                })
                .collect()
        };
        let problems = to_problems(self.problems);
        match config {
            Some(config) if problems.is_empty() => Ok(Loaded {
                config,
                warnings: to_problems(self.warnings),
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }

    /// A humantime duration such as `5s`, `250ms` or `24h` within `range` (zero is written
    /// `0s`); `default` when absent or refused.
    pub fn duration(
        &mut self,
        key: &str,
        raw: Option<String>,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Duration {
        let Some(text) = raw else {
            return default;
        };
        let message = match humantime::parse_duration(text.trim()) {
            Ok(d) if range.contains(&d) => return d,
            Ok(d) if d.is_zero() => format!("{text:?} is zero; give a positive duration"),
            Ok(_) => {
                let human = humantime::format_duration;
                let (start, end) = (*range.start(), *range.end());
                // Zero has its own message, so a range of positive durations needs no start.
                let limits = if start == *POSITIVE.start() {
                    format!("at most {}", human(end))
                } else {
                    format!("{} ..= {}", human(start), human(end))
                };
                format!("{text:?} is out of range; give {limits}")
            }
            Err(e) => {
                format!("{text:?} is not a duration ({e}); write e.g. \"5s\", \"250ms\" or \"24h\"")
            }
        };
        self.problem(key, message);
        default
    }

    /// A whole number within `range`; `None` when absent or refused. `hint` follows the range
    /// in the message (a unit, or what leaving the key unset does).
    pub fn number<T>(
        &mut self,
        key: &str,
        raw: Option<u64>,
        range: RangeInclusive<T>,
        hint: &str,
    ) -> Option<T>
    where
        T: TryFrom<u64> + PartialOrd + Display,
    {
        let n = raw?;
        match T::try_from(n) {
            Ok(value) if range.contains(&value) => Some(value),
            _ => {
                let (start, end) = (range.start(), range.end());
                self.problem(
                    key,
                    format!("{n} is out of range; give {start} ..= {end}{hint}"),
                );
                None
            }
        }
    }

    /// A fraction within `0.0 ..= max`; `default` when absent or refused (NaN included).
    pub fn fraction(&mut self, key: &str, raw: Option<f64>, default: f64, max: f64) -> f64 {
        match raw {
            None => default,
            Some(x) if (0.0..=max).contains(&x) => x,
            Some(x) => {
                self.problem(key, format!("{x} is out of range; give 0.0 ..= {max:.1}"));
                default
            }
        }
    }

    /// A `service/command` from the file, looked up in the catalogue: the spec, or a problem
    /// under `key` (with a "did you mean" when a known command is close). With `allow_unknown`
    /// (`server.allow_unknown_commands`) a well-formed command outside the catalogue is
    /// accepted as [`Named::Unknown`] (with a warning when a known command is close: a typo
    /// would otherwise go to Tencent as a command of its own).
    pub fn named<'c>(
        &mut self,
        catalogue: &'c Catalogue,
        key: &str,
        command: &str,
        allow_unknown: bool,
    ) -> Option<Named<'c>> {
        if let Some(id) = catalogue.lookup(command) {
            return Some(Named::Known(catalogue.spec(id)));
        }
        let names: Vec<&str> = catalogue.iter().map(|(_, spec)| spec.name).collect();
        let near = did_you_mean(command, &names);
        if !crate::route::is_command(command) {
            return self.refuse(
                key,
                format!(
                    "{command:?} is not a command: give service/command, e.g. \"sns/friend_get\""
                ),
            );
        }
        if allow_unknown {
            if let Some(near) = near {
                self.warning(
                    key,
                    format!(
                        "{command:?} is not in the catalogue and goes to Tencent as a command \
                         of its own; did you mean {near:?}?"
                    ),
                );
            }
            return Some(Named::Unknown);
        }
        let mut message = format!("{command:?} is not in the catalogue");
        if let Some(near) = near {
            message.push_str(&format!("; did you mean {near:?}?"));
        }
        message.push_str(
            "; a command outside it (a Tencent API newer than the gateway) needs \
             server.allow_unknown_commands = true",
        );
        self.problem(key, message);
        None
    }

    /// Checks the `[[key]]` tables in file order with `check`, keeping the first for each
    /// command: a later one is a problem naming the first (`noun` says what a table is, "rule"
    /// or "quota"). Tables that are not tables were reported in stage 1 and are skipped, as
    /// their (empty) fields would only add noise.
    pub fn one_per_command<R, T>(
        &mut self,
        key: &str,
        raws: Vec<R>,
        noun: &str,
        mut check: impl FnMut(&mut Findings, &str, R) -> Option<T>,
        command: fn(&T) -> &str,
    ) -> Vec<T> {
        // Command → the key of its first table, to name it when a second one turns up.
        let mut first: BTreeMap<String, String> = BTreeMap::new();
        let mut kept = Vec::with_capacity(raws.len());
        for (i, raw) in raws.into_iter().enumerate() {
            let key = format!("{key}[{i}]");
            if self.has_problem(&key) {
                continue;
            }
            let Some(table) = check(self, &key, raw) else {
                continue;
            };
            let name = command(&table);
            if let Some(first) = first.get(name) {
                self.problem(
                    format!("{key}.command"),
                    format!("{name} already has a {noun} ({first}); give each command one {noun}"),
                );
                continue;
            }
            first.insert(name.to_owned(), key);
            kept.push(table);
        }
        kept
    }
}

/// The candidate `word` is most likely a slip for: at most 2 edits away (Levenshtein), or
/// equal but for letter case. The first of equally close candidates wins.
pub(super) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let near = candidates
        .iter()
        .min_by_key(|candidate| strsim::levenshtein(candidate, word))?;
    (strsim::levenshtein(near, word) <= 2 || near.eq_ignore_ascii_case(word)).then_some(*near)
}

/// The variable that overrides `key`, as an operator would write it.
pub(super) fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
    )
}

/// An empty string counts as unset, so an environment override can clear a file's value.
pub(super) fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Reads at most `limit` bytes, failing beyond that (a wrong path such as `/dev/zero` must not
/// hang startup).
pub(super) fn read_capped(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// Replaces every run of 32 or more hex digits with `<redacted>`, so a key pasted into the
/// wrong field is not echoed by a message that quotes the field's value.
pub(super) fn redact_key_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        out.push_str(if run.len() >= 32 { "<redacted>" } else { run });
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A command named in the file: in the catalogue, or outside it with pass-through allowed.
#[derive(Debug, Clone, Copy)]
pub enum Named<'c> {
    Known(&'c CommandSpec),
    Unknown,
}
