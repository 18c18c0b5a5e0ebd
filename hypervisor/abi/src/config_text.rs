//! The line format of `\exitless\exitless.cfg`, shared by the loader (which only needs `kernel`) and the
//! hypervisor (which reads everything; see `hypervisor::config`).
//!
//! ```text
//! # comment
//! key = value            top-level setting
//! [guest NAME]           starts a section; keys below it belong to it
//! key = value
//! ```

/// One meaningful line of the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// `[kind name]` (name may be empty).
    Section {
        kind: &'a str,
        name: &'a str,
    },
    Setting {
        key: &'a str,
        value: &'a str,
    },
    /// A line that is neither: reported with its number by the caller.
    Malformed(&'a str),
}

/// The items of `text` with their 1-based line numbers; blank lines and comments are skipped.
pub fn items(text: &str) -> impl Iterator<Item = (usize, Item<'_>)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return None;
        }
        let item = if let Some(inner) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let inner = inner.trim();
            let (kind, name) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
            Item::Section {
                kind,
                name: name.trim(),
            }
        } else if let Some((key, value)) = line.split_once('=') {
            Item::Setting {
                key: key.trim(),
                value: value.trim(),
            }
        } else {
            Item::Malformed(line)
        };
        Some((i + 1, item))
    })
}

/// A top-level setting (before any section), e.g. the loader's `kernel`.
pub fn top_level<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    for (_, item) in items(text) {
        match item {
            Item::Section { .. } => return None,
            Item::Setting { key: k, value } if k == key => return Some(value),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# test image\nkernel = guests/bare.elf  # baseline run\nemulator_exit=yes\n\n[guest eli]\nkernel = ignored\nbogus line\n";

    #[test]
    fn items_are_classified_with_line_numbers() {
        let all: Vec<_> = items(SAMPLE).collect();
        assert_eq!(
            all[0],
            (
                2,
                Item::Setting {
                    key: "kernel",
                    value: "guests/bare.elf"
                }
            )
        );
        assert_eq!(
            all[1],
            (
                3,
                Item::Setting {
                    key: "emulator_exit",
                    value: "yes"
                }
            )
        );
        assert_eq!(
            all[2],
            (
                5,
                Item::Section {
                    kind: "guest",
                    name: "eli"
                }
            )
        );
        assert_eq!(all[4], (7, Item::Malformed("bogus line")));
    }

    #[test]
    fn top_level_ignores_keys_inside_sections() {
        assert_eq!(top_level(SAMPLE, "kernel"), Some("guests/bare.elf"));
        assert_eq!(top_level("[guest a]\nkernel = x\n", "kernel"), None);
    }
}
