//! The serial-line protocol between code under test and `cargo xtask test`.
//!
//! Everything xtask judges comes from these lines, never from elapsed time:
//!
//! ```text
//! summary: <topic> key=value key=value ...        boot-summary facts (any number)
//! EXITLESS-TEST BEGIN <suite>
//! EXITLESS-TEST RESULT <name> ok
//! EXITLESS-TEST RESULT <name> FAILED <detail>
//! EXITLESS-TEST RESULT <name> skipped <reason>
//! EXITLESS-TEST END passed=<n> failed=<n> skipped=<n>
//! EXITLESS-POWEROFF <code>                         the kernel is about to power off
//! ```
//!
//! A run passes only if BEGIN, END and POWEROFF all appear, END's counts agree with the RESULT
//! lines, and nothing failed. Values never contain spaces; `key=value` tokens are split on `=`.

use core::fmt::{self, Write};

pub const TEST_PREFIX: &str = "EXITLESS-TEST";
pub const FACT_PREFIX: &str = "summary:";
pub const POWEROFF_PREFIX: &str = "EXITLESS-POWEROFF";

/// Outcome of one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    Ok,
    Failed(&'a str),
    Skipped(&'a str),
}

/// One parsed protocol line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Begin {
        suite: &'a str,
    },
    Result {
        name: &'a str,
        outcome: Outcome<'a>,
    },
    End {
        passed: u32,
        failed: u32,
        skipped: u32,
    },
    PowerOff {
        code: u32,
    },
    /// A `summary:` line: its topic and the rest (`key=value` tokens, see [`fields`]).
    Fact {
        topic: &'a str,
        fields: &'a str,
    },
}

pub fn write_begin(w: &mut impl Write, suite: &str) -> fmt::Result {
    writeln!(w, "{TEST_PREFIX} BEGIN {suite}")
}

pub fn write_result(w: &mut impl Write, name: &str, outcome: Outcome<'_>) -> fmt::Result {
    match outcome {
        Outcome::Ok => writeln!(w, "{TEST_PREFIX} RESULT {name} ok"),
        Outcome::Failed(detail) => writeln!(w, "{TEST_PREFIX} RESULT {name} FAILED {detail}"),
        Outcome::Skipped(reason) => writeln!(w, "{TEST_PREFIX} RESULT {name} skipped {reason}"),
    }
}

pub fn write_end(w: &mut impl Write, passed: u32, failed: u32, skipped: u32) -> fmt::Result {
    writeln!(
        w,
        "{TEST_PREFIX} END passed={passed} failed={failed} skipped={skipped}"
    )
}

pub fn write_poweroff(w: &mut impl Write, code: u32) -> fmt::Result {
    writeln!(w, "{POWEROFF_PREFIX} {code}")
}

/// Parses one line of serial output; `None` for lines that are not part of the protocol.
/// Tolerates a trailing `\r` and leading noise before the prefix (a UART may lose sync).
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(at) = line.find(TEST_PREFIX) {
        let rest = line[at + TEST_PREFIX.len()..].trim_start();
        let (verb, rest) = split_word(rest);
        return match verb {
            "BEGIN" => Some(Line::Begin { suite: rest.trim() }),
            "RESULT" => {
                let (name, rest) = split_word(rest);
                let (status, detail) = split_word(rest);
                let outcome = match status {
                    "ok" => Outcome::Ok,
                    "FAILED" => Outcome::Failed(detail),
                    "skipped" => Outcome::Skipped(detail),
                    _ => return None,
                };
                (!name.is_empty()).then_some(Line::Result { name, outcome })
            }
            "END" => {
                let mut counts = [None; 3];
                for (key, value) in fields(rest) {
                    let slot = match key {
                        "passed" => 0,
                        "failed" => 1,
                        "skipped" => 2,
                        _ => continue,
                    };
                    counts[slot] = value.parse().ok();
                }
                Some(Line::End {
                    passed: counts[0]?,
                    failed: counts[1]?,
                    skipped: counts[2]?,
                })
            }
            _ => None,
        };
    }
    if let Some(at) = line.find(POWEROFF_PREFIX) {
        let code = line[at + POWEROFF_PREFIX.len()..].trim().parse().ok()?;
        return Some(Line::PowerOff { code });
    }
    let rest = line.strip_prefix(FACT_PREFIX)?.trim_start();
    let (topic, fields) = split_word(rest);
    (!topic.is_empty()).then_some(Line::Fact { topic, fields })
}

/// The `key=value` tokens of a fact line; tokens without `=` are skipped.
pub fn fields(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split_ascii_whitespace()
        .filter_map(|tok| tok.split_once('='))
}

/// Looks up one key in a fact line's fields.
pub fn field<'a>(fields_str: &'a str, key: &str) -> Option<&'a str> {
    fields(fields_str).find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(' ') {
        Some(i) => (&s[..i], s[i + 1..].trim_start()),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(f: impl FnOnce(&mut String) -> fmt::Result) -> String {
        let mut s = String::new();
        f(&mut s).unwrap();
        s
    }

    #[test]
    fn emitted_lines_parse_back() {
        assert_eq!(
            parse_line(&emit(|w| write_begin(w, "boot"))),
            Some(Line::Begin { suite: "boot" })
        );
        assert_eq!(
            parse_line(&emit(|w| write_result(w, "vmx", Outcome::Failed("no EPT")))),
            Some(Line::Result {
                name: "vmx",
                outcome: Outcome::Failed("no EPT")
            })
        );
        assert_eq!(
            parse_line(&emit(|w| write_result(
                w,
                "kvm",
                Outcome::Skipped("no /dev/kvm")
            ))),
            Some(Line::Result {
                name: "kvm",
                outcome: Outcome::Skipped("no /dev/kvm")
            })
        );
        assert_eq!(
            parse_line(&emit(|w| write_end(w, 3, 1, 2))),
            Some(Line::End {
                passed: 3,
                failed: 1,
                skipped: 2
            })
        );
        assert_eq!(
            parse_line(&emit(|w| write_poweroff(w, 0))),
            Some(Line::PowerOff { code: 0 })
        );
    }

    #[test]
    fn facts_expose_their_fields() {
        let Some(Line::Fact { topic, fields: f }) =
            parse_line("summary: drhd index=0 base=0xfed90000 ir=yes\r")
        else {
            panic!("not a fact")
        };
        assert_eq!(topic, "drhd");
        assert_eq!(field(f, "base"), Some("0xfed90000"));
        assert_eq!(field(f, "ir"), Some("yes"));
        assert_eq!(field(f, "missing"), None);
    }

    #[test]
    fn garbage_and_partial_lines_are_not_protocol() {
        assert_eq!(parse_line("hello"), None);
        assert_eq!(parse_line("EXITLESS-TEST RESULT x maybe"), None);
        assert_eq!(parse_line("EXITLESS-TEST END passed=1 failed=0"), None);
        assert_eq!(parse_line("EXITLESS-TEST RESULT"), None);
        assert_eq!(parse_line("EXITLESS-POWEROFF x"), None);
        assert_eq!(parse_line("summary:"), None);
    }

    #[test]
    fn leading_noise_before_the_prefix_is_tolerated() {
        assert_eq!(
            parse_line("\u{1b}[0mEXITLESS-TEST BEGIN s"),
            Some(Line::Begin { suite: "s" })
        );
    }
}
