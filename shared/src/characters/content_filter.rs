//! The prompt filter applied according to `users.content_filter_level`.
//!
//! Each rule is a named list of terms; a level applies a set of rules. A term
//! matches whole words, case-insensitively (`sex` blocks "sex" but not
//! "Sussex"); a multi-word term matches those words in sequence. The lists are
//! deliberately short and documented in the README: this is a first line that
//! names the rule it applied, not a classifier.

use crate::kernel::error::ApiError;
use crate::users::{ContentFilterLevel, User};

/// A rule: its id (named in the 422), the levels it applies at, its terms.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub levels: &'static [ContentFilterLevel],
    pub terms: &'static [&'static str],
}

const ALL: &[ContentFilterLevel] = &ContentFilterLevel::ALL;
const MODERATE_AND_STRICT: &[ContentFilterLevel] =
    &[ContentFilterLevel::Strict, ContentFilterLevel::Moderate];
const STRICT: &[ContentFilterLevel] = &[ContentFilterLevel::Strict];

pub const RULES: &[Rule] = &[
    Rule {
        id: "minor-safety",
        levels: ALL,
        terms: &[
            "loli",
            "lolicon",
            "shota",
            "shotacon",
            "underage",
            "jailbait",
            "child porn",
        ],
    },
    Rule {
        id: "hate-symbols",
        levels: ALL,
        terms: &["swastika", "kkk", "white power"],
    },
    Rule {
        id: "explicit-sexual",
        levels: MODERATE_AND_STRICT,
        terms: &[
            "nsfw",
            "nude",
            "nudity",
            "naked",
            "porn",
            "pornographic",
            "sex",
            "sexual",
            "hentai",
            "xxx",
            "topless",
            "genitals",
            "nipples",
            "explicit",
        ],
    },
    Rule {
        id: "graphic-violence",
        levels: MODERATE_AND_STRICT,
        terms: &[
            "gore",
            "gory",
            "dismembered",
            "dismemberment",
            "decapitated",
            "beheaded",
            "mutilated",
            "disembowelled",
        ],
    },
    Rule {
        id: "suggestive",
        levels: STRICT,
        terms: &[
            "lingerie",
            "bikini",
            "seductive",
            "sexy",
            "cleavage",
            "underwear",
            "erotic",
        ],
    },
    Rule {
        id: "violence",
        levels: STRICT,
        terms: &[
            "blood", "bloody", "corpse", "kill", "killing", "murder", "weapon", "gun",
        ],
    },
];

/// The level a user's text is checked at: their `content_filter_level`, `moderate` when unset.
pub fn level_of(user: &User) -> ContentFilterLevel {
    user.content_filter_level
        .unwrap_or(ContentFilterLevel::Moderate)
}

/// A 422 naming `field` and the rule when `text` breaks a rule of `level`.
pub fn check(level: ContentFilterLevel, field: &str, text: &str) -> Result<(), ApiError> {
    match violation(level, text) {
        Some(rule) => Err(ApiError::validation(
            field,
            format!(
                "blocked by content filter rule `{}` (your content_filter_level is {level})",
                rule.id
            ),
        )),
        None => Ok(()),
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// The first rule of `level` that `text` breaks, if any.
pub fn violation(level: ContentFilterLevel, text: &str) -> Option<&'static Rule> {
    let words = words(text);
    RULES
        .iter()
        .filter(|rule| rule.levels.contains(&level))
        .find(|rule| {
            rule.terms.iter().any(|term| {
                let term_words: Vec<&str> = term.split(' ').collect();
                words
                    .windows(term_words.len())
                    .any(|window| window.iter().zip(&term_words).all(|(w, t)| w == t))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_apply_their_rules() {
        assert_eq!(
            violation(ContentFilterLevel::Moderate, "A NSFW elf").map(|r| r.id),
            Some("explicit-sexual")
        );
        assert_eq!(violation(ContentFilterLevel::Relaxed, "A NSFW elf"), None);
        assert_eq!(
            violation(ContentFilterLevel::Strict, "elf in a bikini").map(|r| r.id),
            Some("suggestive")
        );
        assert_eq!(
            violation(ContentFilterLevel::Moderate, "elf in a bikini"),
            None
        );
        assert_eq!(
            violation(ContentFilterLevel::Relaxed, "an underage character").map(|r| r.id),
            Some("minor-safety")
        );
    }

    #[test]
    fn terms_match_whole_words_and_phrases() {
        assert_eq!(
            violation(ContentFilterLevel::Moderate, "a knight from Sussex"),
            None
        );
        assert_eq!(violation(ContentFilterLevel::Strict, "a gunslinger"), None);
        assert_eq!(
            violation(ContentFilterLevel::Relaxed, "white-power banner").map(|r| r.id),
            Some("hate-symbols")
        );
        assert_eq!(
            violation(ContentFilterLevel::Relaxed, "a white horse of power"),
            None
        );
    }

    #[test]
    fn only_the_three_levels_exist_and_each_applies_the_rules_of_all_levels() {
        assert_eq!(ContentFilterLevel::parse("none"), None);
        assert_eq!(ContentFilterLevel::parse("Strict"), None);
        for level in ContentFilterLevel::ALL {
            assert!(
                violation(level, "an underage character").is_some(),
                "{level}"
            );
        }
    }
}
