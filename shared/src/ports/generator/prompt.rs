//! The prompt an image server receives, composed from the character.
//!
//! [`compose`] is the only place that decides what AUTOMATIC1111's `prompt`
//! and `negative_prompt` say; the A1111 adapter sends what it returns and
//! nothing else. It is a pure function of the request: the same character
//! always gives the same text.
//!
//! # Terms
//!
//! A prompt is read as a list of *terms* separated by commas. Commas inside
//! A1111's brackets do not separate (`(red, gold:1.2)` and `<lora:x:0.8>` stay
//! whole terms; `\(` is a literal bracket), and runs of whitespace, newlines
//! included, become one space. Two terms are the same when their words
//! (letters and digits, lowercased) are the same: `Cel-Shading` is
//! `cel shading`.
//!
//! # The prompt
//!
//! In this order, skipping whatever is empty or unknown:
//!
//! 1. the user's prompt, term by term: it matters most to Stable Diffusion,
//!    so it comes first and is never reworded;
//! 2. the style type's phrase ([`style_terms`]; `realistic` adds
//!    `photorealistic, highly detailed, natural lighting`);
//! 3. the art style, as written;
//! 4. the mood, as `{mood} mood` (`melancholic mood`; a mood already ending in
//!    `mood`, `atmosphere`, ... is kept as it is; `dark, brooding` becomes
//!    `dark and brooding mood`);
//! 5. the colour palette, named ([`colour_name`]: `#1e90ff` is `blue`) since
//!    Stable Diffusion does not read hex codes: at most
//!    [`MAX_PALETTE_COLOURS`] distinct names, as `blue and orange color palette`;
//! 6. the tags, one term each.
//!
//! A term from 2 to 6 is left out when the prompt already says it (the same
//! term, or its words in a row inside an earlier term: the tag `lighthouse`
//! adds nothing to `a lighthouse keeper`), or when it is one of the user's
//! negative terms (the user's "not this" wins). The user's own terms are
//! only deduplicated.
//!
//! # The negative prompt
//!
//! The user's negative prompt, term by term (deduplicated), then the style
//! type's negative terms ([`style_terms`]; `realistic` adds
//! `cartoon, anime, illustration`), each left out when the negative prompt
//! already has it or when the composed prompt asks for it (an art style
//! `watercolor illustration` drops `illustration` from the negatives).
//!
//! # Bounds
//!
//! The prompt is at most [`MAX_PROMPT_CHARS`] characters and the negative
//! prompt at most [`MAX_NEGATIVE_PROMPT_CHARS`]. Terms are added whole, in the
//! order above, until the next one does not fit; everything after it is left
//! out, so a lower-priority term never displaces a higher one. The user's
//! texts (at most 2000 characters each when they come from a character) always
//! fit; a longer first term would be cut to the bound.
//!
//! # Example
//!
//! (The unit test `the_documented_example` checks exactly this.)
//!
//! ```text
//! prompt            a lighthouse keeper, oil painting
//! negative_prompt   blurry, extra fingers
//! style_type        realistic
//! art_style         Oil Painting
//! mood              melancholic
//! color_palette     #1e90ff, #ffa500, #1E90FF
//! tags              lighthouse, stormy sea
//!
//! → prompt          a lighthouse keeper, oil painting, photorealistic, highly detailed,
//!                   natural lighting, melancholic mood, blue and orange color palette,
//!                   stormy sea
//! → negative_prompt blurry, extra fingers, cartoon, anime, illustration
//! ```
//!
//! (`Oil Painting` repeats a term of the prompt, the second `#1e90ff` names
//! blue again, and `a lighthouse keeper` already says `lighthouse`.)

use super::GenerationRequest;

/// Longest composed prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 2400;
/// Longest composed negative prompt, in characters.
pub const MAX_NEGATIVE_PROMPT_CHARS: usize = 2400;
/// Most colour names the palette term lists.
pub const MAX_PALETTE_COLOURS: usize = 5;

/// What A1111 receives as `prompt` and `negative_prompt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposedPrompt {
    pub prompt: String,
    pub negative_prompt: String,
}

/// The terms a style type (`characters.style_type`, any case) adds to the
/// prompt and to the negative prompt; an unknown style type adds none.
pub fn style_terms(style_type: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match style_type.trim().to_ascii_lowercase().as_str() {
        "anime" => (
            &["anime style", "cel shading"],
            &["photorealistic", "3d render"],
        ),
        "realistic" => (
            &["photorealistic", "highly detailed", "natural lighting"],
            &["cartoon", "anime", "illustration"],
        ),
        "cartoon" => (
            &["cartoon style", "bold outlines", "flat colors"],
            &["photorealistic"],
        ),
        "fantasy" => (&["fantasy art", "magical atmosphere"], &[]),
        "cyberpunk" => (&["cyberpunk style", "neon lighting", "futuristic"], &[]),
        "steampunk" => (
            &["steampunk style", "brass and copper", "clockwork details"],
            &[],
        ),
        "minimalist" => (
            &["minimalist style", "simple shapes", "clean background"],
            &["cluttered background"],
        ),
        "comic" => (
            &["comic book style", "bold ink lines", "halftone shading"],
            &["photorealistic"],
        ),
        "portrait" => (
            &["character portrait", "detailed face"],
            &["cropped head", "out of frame"],
        ),
        "artistic" => (&["digital painting", "painterly"], &[]),
        _ => (&[], &[]),
    }
}

/// Composes A1111's prompt and negative prompt from the request (the module
/// documentation gives the rules).
pub fn compose(request: &GenerationRequest) -> ComposedPrompt {
    let user_negatives: Vec<Term> = terms(&request.negative_prompt).collect();
    let (style_positive, style_negative) = style_terms(&request.style_type);

    let mut prompt = TermList::new(MAX_PROMPT_CHARS);
    prompt.extend_user(terms(&request.prompt));

    let mut added: Vec<Term> = Vec::new();
    added.extend(style_positive.iter().map(|t| Term::new(t)));
    if let Some(art_style) = &request.art_style {
        added.extend(terms(art_style));
    }
    if let Some(mood) = request.mood.as_deref().and_then(mood_term) {
        added.push(mood);
    }
    if let Some(palette) = palette_term(&request.color_palette) {
        added.push(palette);
    }
    for tag in &request.tags {
        added.extend(terms(tag));
    }
    for term in added {
        if term.words.is_empty()
            || prompt.covers(&term)
            || user_negatives.iter().any(|n| n.same_as(&term))
        {
            continue;
        }
        if !prompt.try_push(term) {
            break;
        }
    }

    let mut negative = TermList::new(MAX_NEGATIVE_PROMPT_CHARS);
    negative.extend_user(user_negatives);
    for term in style_negative.iter().map(|t| Term::new(t)) {
        if negative.has(&term) || prompt.covers(&term) {
            continue;
        }
        if !negative.try_push(term) {
            break;
        }
    }

    ComposedPrompt {
        prompt: prompt.join(),
        negative_prompt: negative.join(),
    }
}

/// One comma-separated part of a prompt.
#[derive(Debug, Clone)]
struct Term {
    /// Trimmed, whitespace collapsed, as written otherwise.
    text: String,
    /// Its words: runs of letters and digits, lowercased.
    words: Vec<String>,
}

impl Term {
    fn new(raw: &str) -> Self {
        let text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        let words = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        Self { text, words }
    }

    fn chars(&self) -> usize {
        self.text.chars().count()
    }

    /// The same term: the same words, or (for terms without words, such as
    /// `(((`) the same text, ignoring case.
    fn same_as(&self, other: &Term) -> bool {
        if self.words.is_empty() && other.words.is_empty() {
            self.text.to_lowercase() == other.text.to_lowercase()
        } else {
            self.words == other.words
        }
    }

    /// This term's words include `other`'s, in a row.
    fn contains(&self, other: &Term) -> bool {
        !other.words.is_empty()
            && self
                .words
                .windows(other.words.len())
                .any(|window| window == other.words.as_slice())
    }
}

/// The terms of a text, split at commas outside brackets; empty ones are
/// dropped.
fn terms(text: &str) -> impl Iterator<Item = Term> + '_ {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(Term::new)
        .filter(|term| !term.text.is_empty())
}

/// Terms joined by `", "` within a length bound.
struct TermList {
    terms: Vec<Term>,
    chars: usize,
    limit: usize,
}

const SEPARATOR: &str = ", ";

impl TermList {
    fn new(limit: usize) -> Self {
        Self {
            terms: Vec::new(),
            chars: 0,
            limit,
        }
    }

    /// The user's terms, deduplicated, until one does not fit (a first term
    /// longer than the bound is cut to it).
    fn extend_user(&mut self, terms: impl IntoIterator<Item = Term>) {
        for term in terms {
            if self.has(&term) {
                continue;
            }
            if self.terms.is_empty() && term.chars() > self.limit {
                let cut: String = term.text.chars().take(self.limit).collect();
                self.push(Term::new(&cut));
                break;
            }
            if !self.try_push(term) {
                break;
            }
        }
    }

    fn has(&self, term: &Term) -> bool {
        self.terms.iter().any(|t| t.same_as(term))
    }

    /// Already said: the same term, or its words inside one.
    fn covers(&self, term: &Term) -> bool {
        self.terms
            .iter()
            .any(|t| t.same_as(term) || t.contains(term))
    }

    /// Adds the term if it fits; `false` if it does not.
    fn try_push(&mut self, term: Term) -> bool {
        let separator = if self.terms.is_empty() {
            0
        } else {
            SEPARATOR.len()
        };
        if self.chars + separator + term.chars() > self.limit {
            return false;
        }
        self.push(term);
        true
    }

    fn push(&mut self, term: Term) {
        if !self.terms.is_empty() {
            self.chars += SEPARATOR.len();
        }
        self.chars += term.chars();
        self.terms.push(term);
    }

    fn join(&self) -> String {
        self.terms
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .join(SEPARATOR)
    }
}

/// Words that already make a mood a phrase of its own.
const MOOD_NOUNS: [&str; 7] = [
    "mood",
    "atmosphere",
    "ambience",
    "ambiance",
    "vibe",
    "feel",
    "feeling",
];

/// `{mood} mood`; the mood's comma-separated parts joined by `and`.
fn mood_term(mood: &str) -> Option<Term> {
    let parts: Vec<Term> = terms(mood).filter(|t| !t.words.is_empty()).collect();
    let last_word = parts.last()?.words.last()?.clone();
    let joined = join_and(parts.iter().map(|t| t.text.as_str()));
    Some(if MOOD_NOUNS.contains(&last_word.as_str()) {
        Term::new(&joined)
    } else {
        Term::new(&format!("{joined} mood"))
    })
}

/// `blue and orange color palette`: the colours' names, each once, at most
/// [`MAX_PALETTE_COLOURS`]; colours that are not hex codes are skipped.
fn palette_term(colours: &[String]) -> Option<Term> {
    let mut names: Vec<String> = Vec::new();
    for name in colours.iter().filter_map(|c| colour_name(c)) {
        if names.len() == MAX_PALETTE_COLOURS {
            break;
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return None;
    }
    Some(Term::new(&format!(
        "{} color palette",
        join_and(names.iter().map(String::as_str))
    )))
}

/// `a`, `a and b`, `a, b and c`.
fn join_and<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// `#rgb` or `#rrggbb` (any case) as red, green, blue.
fn parse_hex(raw: &str) -> Option<[u8; 3]> {
    let hex = raw.trim().strip_prefix('#')?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize, len: usize| u8::from_str_radix(hex.get(i..i + len)?, 16).ok();
    match hex.len() {
        3 => Some([digit(0, 1)? * 17, digit(1, 1)? * 17, digit(2, 1)? * 17]),
        6 => Some([digit(0, 2)?, digit(2, 2)?, digit(4, 2)?]),
        _ => None,
    }
}

/// A plain English name for a hex colour, from its hue, saturation and
/// lightness: `#1e90ff` is `blue`, `#8b0000` `dark red`, `#ffc0cb` `pink`,
/// `#8b4513` `brown`, `#f5f5f5` `white`. `None` for anything but `#rgb` or
/// `#rrggbb`.
pub fn colour_name(hex: &str) -> Option<String> {
    let [r, g, b] = parse_hex(hex)?.map(|c| f64::from(c) / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let chroma = max - min;
    let lightness = (max + min) / 2.0;
    let saturation = if chroma == 0.0 {
        0.0
    } else {
        chroma / (1.0 - (2.0 * lightness - 1.0).abs())
    };
    if chroma < 0.1 || saturation < 0.2 {
        let grey = match lightness {
            l if l < 0.12 => "black",
            l if l < 0.4 => "dark gray",
            l if l < 0.75 => "gray",
            l if l < 0.93 => "light gray",
            _ => "white",
        };
        return Some(grey.to_string());
    }
    let hue = if max == r {
        60.0 * ((g - b) / chroma).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / chroma + 2.0)
    } else {
        60.0 * ((r - g) / chroma + 4.0)
    };
    let base = match hue {
        h if !(15.0..335.0).contains(&h) => "red",
        h if h < 40.0 => "orange",
        h if h < 68.0 => "yellow",
        h if h < 160.0 => "green",
        h if h < 190.0 => "teal",
        h if h < 255.0 => "blue",
        h if h < 300.0 => "purple",
        _ => "magenta",
    };
    // Names of their own rather than "dark orange" or "light red".
    match base {
        "orange" if lightness < 0.4 => return Some("brown".into()),
        "yellow" if lightness < 0.3 => return Some("olive".into()),
        "red" if lightness > 0.7 => return Some("pink".into()),
        "magenta" if lightness > 0.6 => return Some("pink".into()),
        _ => {}
    }
    let shade = if lightness < 0.3 {
        "dark "
    } else if lightness > 0.75 {
        "light "
    } else if saturation < 0.45 {
        "muted "
    } else {
        ""
    };
    Some(format!("{shade}{base}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> GenerationRequest {
        GenerationRequest {
            prompt: "a lighthouse keeper, oil painting".into(),
            negative_prompt: "blurry, extra fingers".into(),
            style_type: "realistic".into(),
            ..GenerationRequest::default()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_documented_example() {
        let composed = compose(&GenerationRequest {
            art_style: Some("Oil Painting".into()),
            mood: Some("melancholic".into()),
            color_palette: strings(&["#1e90ff", "#ffa500", "#1E90FF"]),
            tags: strings(&["lighthouse", "stormy sea"]),
            ..request()
        });
        assert_eq!(
            composed.prompt,
            "a lighthouse keeper, oil painting, photorealistic, highly detailed, \
             natural lighting, melancholic mood, blue and orange color palette, stormy sea"
        );
        assert_eq!(
            composed.negative_prompt,
            "blurry, extra fingers, cartoon, anime, illustration"
        );
    }

    #[test]
    fn the_users_prompt_comes_first_and_unchanged() {
        let composed = compose(&GenerationRequest {
            prompt: "(masterpiece:1.2), a knight with a lantern, <lora:knight:0.8>".into(),
            style_type: "anime".into(),
            tags: strings(&["night"]),
            ..GenerationRequest::default()
        });
        assert_eq!(
            composed.prompt,
            "(masterpiece:1.2), a knight with a lantern, <lora:knight:0.8>, anime style, cel shading, night"
        );
    }

    #[test]
    fn empty_parts_are_skipped() {
        let composed = compose(&GenerationRequest {
            prompt: " a fox ,, ,\n".into(),
            negative_prompt: String::new(),
            style_type: "unknown-style".into(),
            art_style: Some("   ".into()),
            mood: Some(" , ".into()),
            color_palette: strings(&["not a colour", "#12", "#gggggg"]),
            tags: strings(&["", "  "]),
            ..GenerationRequest::default()
        });
        assert_eq!(composed.prompt, "a fox");
        assert_eq!(composed.negative_prompt, "");

        // Nothing at all: nothing, not a stray comma.
        let composed = compose(&GenerationRequest {
            prompt: String::new(),
            style_type: String::new(),
            ..GenerationRequest::default()
        });
        assert_eq!(composed.prompt, "");
        assert_eq!(composed.negative_prompt, "");

        // Only the character's attributes, without a prompt.
        let composed = compose(&GenerationRequest {
            prompt: String::new(),
            style_type: "fantasy".into(),
            tags: strings(&["dragon"]),
            ..GenerationRequest::default()
        });
        assert_eq!(composed.prompt, "fantasy art, magical atmosphere, dragon");
    }

    #[test]
    fn every_style_type_has_a_phrase() {
        for style in crate::kernel::vocabulary::STYLE_TYPES {
            let (positive, negative) = style_terms(style);
            assert!(!positive.is_empty(), "{style}");
            let composed = compose(&GenerationRequest {
                prompt: "a fox".into(),
                negative_prompt: String::new(),
                style_type: style.to_uppercase(),
                ..GenerationRequest::default()
            });
            assert!(composed.prompt.starts_with("a fox, "), "{style}");
            assert_eq!(
                composed.prompt,
                format!("a fox, {}", positive.join(", ")),
                "{style}"
            );
            assert_eq!(composed.negative_prompt, negative.join(", "), "{style}");
            // A style never asks for what it refuses.
            for term in negative {
                assert!(
                    !positive.iter().any(|p| p.contains(term)),
                    "{style}: {term}"
                );
            }
        }
        assert_eq!(style_terms("watercolour"), (&[][..], &[][..]));
    }

    #[test]
    fn duplicates_are_dropped_whatever_their_case_or_punctuation() {
        let composed = compose(&GenerationRequest {
            prompt: "Red Hair, a fox, red  hair, A FOX".into(),
            negative_prompt: "Blurry, blurry,BLURRY".into(),
            style_type: "anime".into(),
            art_style: Some("Cel-Shading, anime style".into()),
            tags: strings(&["fox", "red hair", "moon", "moon", "Anime"]),
            ..GenerationRequest::default()
        });
        assert_eq!(
            composed.prompt,
            "Red Hair, a fox, anime style, cel shading, moon"
        );
        assert_eq!(
            composed.negative_prompt,
            "Blurry, photorealistic, 3d render"
        );
    }

    #[test]
    fn commas_inside_brackets_do_not_split_terms() {
        let split: Vec<String> = terms(r"(red, gold:1.2), [a, b], \(x, y\), <lora:a,b:1>, {c, d}")
            .map(|t| t.text)
            .collect();
        assert_eq!(
            split,
            [
                "(red, gold:1.2)",
                "[a, b]",
                r"\(x",
                r"y\)",
                "<lora:a,b:1>",
                "{c, d}"
            ]
        );
        // An unclosed bracket keeps the rest as one term rather than failing.
        let split: Vec<String> = terms("a, (b, c").map(|t| t.text).collect();
        assert_eq!(split, ["a", "(b, c"]);
        // A stray closing bracket does not underflow.
        let split: Vec<String> = terms("a), b").map(|t| t.text).collect();
        assert_eq!(split, ["a)", "b"]);
    }

    #[test]
    fn the_users_negative_terms_win_over_added_ones() {
        let composed = compose(&GenerationRequest {
            prompt: "a robot".into(),
            negative_prompt: "neon lighting, Rain".into(),
            style_type: "cyberpunk".into(),
            tags: strings(&["rain", "city"]),
            ..GenerationRequest::default()
        });
        assert_eq!(
            composed.prompt,
            "a robot, cyberpunk style, futuristic, city"
        );
        assert_eq!(composed.negative_prompt, "neon lighting, Rain");
    }

    #[test]
    fn style_negatives_never_contradict_the_prompt() {
        let composed = compose(&GenerationRequest {
            prompt: "an anime girl in a photorealistic city".into(),
            negative_prompt: "lowres".into(),
            style_type: "realistic".into(),
            art_style: Some("watercolor illustration".into()),
            ..GenerationRequest::default()
        });
        // "anime" and "illustration" are asked for; only "cartoon" stays.
        assert_eq!(composed.negative_prompt, "lowres, cartoon");
        // "photorealistic" is already in the prompt.
        assert_eq!(
            composed.prompt,
            "an anime girl in a photorealistic city, highly detailed, natural lighting, \
             watercolor illustration"
        );
    }

    #[test]
    fn an_added_term_the_prompt_already_says_is_left_out() {
        let composed = compose(&GenerationRequest {
            prompt: "a portrait of a knight in the rain, (detailed face:1.3)".into(),
            style_type: "portrait".into(),
            tags: strings(&["knight", "rain", "knight in", "armour"]),
            ..GenerationRequest::default()
        });
        // "character portrait" is not in the prompt: "portrait" is, which is
        // not the same term.
        assert_eq!(
            composed.prompt,
            "a portrait of a knight in the rain, (detailed face:1.3), character portrait, armour"
        );
        // Words match whole, not as substrings: "rain" is not in "brain".
        let composed = compose(&GenerationRequest {
            prompt: "a brain in a jar".into(),
            style_type: String::new(),
            tags: strings(&["rain"]),
            ..GenerationRequest::default()
        });
        assert_eq!(composed.prompt, "a brain in a jar, rain");
    }

    #[test]
    fn moods_read_as_phrases() {
        let prompt = |mood: &str| {
            compose(&GenerationRequest {
                prompt: "x".into(),
                style_type: String::new(),
                mood: Some(mood.into()),
                ..GenerationRequest::default()
            })
            .prompt
        };
        assert_eq!(prompt("melancholic"), "x, melancholic mood");
        assert_eq!(prompt("  Dark,  brooding "), "x, Dark and brooding mood");
        assert_eq!(
            prompt("calm, hopeful, warm"),
            "x, calm, hopeful and warm mood"
        );
        assert_eq!(prompt("eerie atmosphere"), "x, eerie atmosphere");
        assert_eq!(prompt("cozy vibe"), "x, cozy vibe");
        assert_eq!(prompt("!!"), "x");
    }

    #[test]
    fn colours_are_named_not_written_in_hex() {
        for (hex, name) in [
            ("#1e90ff", "blue"),
            ("#1E90FF", "blue"),
            ("#000", "black"),
            ("#000000", "black"),
            ("#fff", "white"),
            ("#f5f5f5", "white"),
            ("#808080", "gray"),
            ("#333333", "dark gray"),
            ("#c0c0c0", "light gray"),
            ("#ff0000", "red"),
            ("#f00", "red"),
            ("#8b0000", "dark red"),
            ("#ffa500", "orange"),
            ("#8b4513", "brown"),
            ("#ffd700", "yellow"),
            ("#556b2f", "muted green"),
            ("#228b22", "green"),
            ("#006400", "dark green"),
            ("#008080", "dark teal"),
            ("#40e0d0", "teal"),
            ("#add8e6", "light blue"),
            ("#000080", "dark blue"),
            ("#663399", "purple"),
            ("#ff00ff", "magenta"),
            ("#ffc0cb", "pink"),
            ("#ff69b4", "pink"),
            ("#808000", "olive"),
            ("#ffe135", "yellow"),
        ] {
            assert_eq!(colour_name(hex).as_deref(), Some(name), "{hex}");
        }
        for bad in ["1e90ff", "#1e90f", "#1e90ffff", "#ggg", "", "#", "#éé"] {
            assert_eq!(colour_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_palette_names_each_colour_once_and_at_most_five() {
        let palette = |colours: &[&str]| palette_term(&strings(colours)).map(|t| t.text);
        assert_eq!(palette(&[]), None);
        assert_eq!(palette(&["nope"]), None);
        assert_eq!(palette(&["#1e90ff"]).as_deref(), Some("blue color palette"));
        assert_eq!(
            palette(&["#1e90ff", "#0000ff", "#ffa500"]).as_deref(),
            Some("blue and orange color palette")
        );
        assert_eq!(
            palette(&[
                "#ff0000", "#ffa500", "#ffff00", "#00ff00", "#0000ff", "#800080", "#ffffff"
            ])
            .as_deref(),
            Some("red, orange, yellow, green and blue color palette")
        );
    }

    #[test]
    fn the_prompt_is_bounded_and_priorities_hold() {
        // A user prompt near the bound leaves room for the first added terms
        // only, in order.
        let long = "word ".repeat(472); // 2359 characters, trimmed
        let composed = compose(&GenerationRequest {
            prompt: long.clone(),
            style_type: "realistic".into(),
            tags: strings(&["a"]),
            ..GenerationRequest::default()
        });
        assert!(composed.prompt.chars().count() <= MAX_PROMPT_CHARS);
        assert_eq!(
            composed.prompt,
            format!("{}, photorealistic, highly detailed", long.trim())
        );

        // Tags that do not fit are dropped from the first that does not fit.
        let tags: Vec<String> = (0..200).map(|i| format!("tag number {i:03}")).collect();
        let composed = compose(&GenerationRequest {
            prompt: "x".into(),
            style_type: String::new(),
            tags: tags.clone(),
            ..GenerationRequest::default()
        });
        let count = composed.prompt.chars().count();
        assert!(count <= MAX_PROMPT_CHARS, "{count}");
        assert!(count > MAX_PROMPT_CHARS - 20, "{count}");
        assert!(
            composed.prompt.ends_with("tag number 148"),
            "{}",
            composed.prompt
        );

        // One enormous first term is cut to the bound; the same for the negatives.
        let huge = "y".repeat(MAX_PROMPT_CHARS + 100);
        let composed = compose(&GenerationRequest {
            prompt: huge.clone(),
            negative_prompt: huge.clone(),
            style_type: "anime".into(),
            ..GenerationRequest::default()
        });
        assert_eq!(composed.prompt, "y".repeat(MAX_PROMPT_CHARS));
        assert_eq!(
            composed.negative_prompt,
            "y".repeat(MAX_NEGATIVE_PROMPT_CHARS)
        );

        // Multibyte characters count as one each.
        let composed = compose(&GenerationRequest {
            prompt: "é".repeat(MAX_PROMPT_CHARS + 1),
            style_type: String::new(),
            ..GenerationRequest::default()
        });
        assert_eq!(composed.prompt.chars().count(), MAX_PROMPT_CHARS);
    }

    #[test]
    fn composition_is_deterministic() {
        let request = GenerationRequest {
            art_style: Some("ink wash".into()),
            mood: Some("serene".into()),
            color_palette: strings(&["#112233", "#abcdef"]),
            tags: strings(&["mist", "mountains"]),
            ..request()
        };
        let first = compose(&request);
        for _ in 0..10 {
            assert_eq!(compose(&request.clone()), first);
        }
    }

    #[test]
    fn whitespace_and_newlines_collapse() {
        let composed = compose(&GenerationRequest {
            prompt: "a  tall\n\ntower,\tat dusk\n".into(),
            negative_prompt: "\n".into(),
            style_type: String::new(),
            ..GenerationRequest::default()
        });
        assert_eq!(composed.prompt, "a tall tower, at dusk");
        assert_eq!(composed.negative_prompt, "");
    }
}
