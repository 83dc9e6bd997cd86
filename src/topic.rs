//! MQTT topic and topic-filter syntax: validation, matching and coverage.
//!
//! The rules are those of MQTT 3.1.1 and 5. Levels are separated by '/' and empty levels
//! count as levels. `+` matches one level and `#` matches the rest. A filter that starts
//! with a wildcard never matches a topic starting with '$'.

/// Limits on filters that clients may ask to stream.
#[derive(Debug, Clone)]
pub struct FilterLimits {
    /// Maximum filter length in bytes of UTF-8.
    pub max_bytes: usize,
    /// Maximum number of '/'-separated levels, empty levels included.
    pub max_levels: usize,
}

/// Reason a filter that a client asked to stream is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter is empty")]
    Empty,
    #[error("filter is {len} bytes, more than the maximum of {max}")]
    TooLong { len: usize, max: usize },
    #[error("filter has {levels} levels, more than the maximum of {max}")]
    TooManyLevels { levels: usize, max: usize },
    #[error("'#' must be the last level of a filter and stand alone in it")]
    MisplacedMultiLevelWildcard,
    #[error("'+' must stand alone in a filter level")]
    MisplacedSingleLevelWildcard,
    #[error("filter contains a NUL or control character")]
    ControlCharacter,
    #[error("filters starting with '$' are reserved for the broker")]
    Reserved,
}

/// Reason a topic that a message would be published to is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {len} bytes, more than the MQTT maximum of 65535")]
    TooLong { len: usize },
    #[error("topic contains the wildcard '{0}', which only filters may use")]
    Wildcard(char),
    #[error("topic contains a NUL character")]
    Nul,
}

/// Maximum length of an MQTT topic in bytes, fixed by its 16-bit length prefix.
const MAX_TOPIC_BYTES: usize = 65_535;

/// Validates a filter that a browser requests to stream.
///
/// Besides MQTT syntax this rejects control characters (U+0000-U+001F, U+007F-U+009F) and
/// any filter starting with '$': `$SYS/...` exposes broker internals, and a
/// `$share/...` subscription would take messages away from other subscribers.
pub fn validate_filter(filter: &str, limits: &FilterLimits) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.len() > limits.max_bytes {
        return Err(FilterError::TooLong {
            len: filter.len(),
            max: limits.max_bytes,
        });
    }
    if filter.chars().any(is_control) {
        return Err(FilterError::ControlCharacter);
    }
    if filter.starts_with('$') {
        return Err(FilterError::Reserved);
    }

    let levels = filter.bytes().filter(|&b| b == b'/').count() + 1;
    if levels > limits.max_levels {
        return Err(FilterError::TooManyLevels {
            levels,
            max: limits.max_levels,
        });
    }

    let mut rest = filter.split('/').peekable();
    while let Some(level) = rest.next() {
        let is_last = rest.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(FilterError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Validates a topic that a message is published to.
///
/// A topic must be non-empty, at most 65535 bytes, and free of the wildcards `+` and `#`
/// and of NUL. The first offending character decides which error is returned.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: topic.len() });
    }

    // All three forbidden characters are ASCII, so a byte scan cannot split a UTF-8 sequence.
    for byte in topic.bytes() {
        match byte {
            b'+' => return Err(TopicError::Wildcard('+')),
            b'#' => return Err(TopicError::Wildcard('#')),
            0 => return Err(TopicError::Nul),
            _ => {}
        }
    }
    Ok(())
}

/// Returns whether `topic` is matched by `filter` under MQTT rules.
///
/// `+` matches exactly one level, an empty one too. `#` matches the parent level and any
/// number of levels below it, so `a/#` matches `a`. A topic starting with '$' is not
/// matched by a filter whose first level is a wildcard. Both arguments are expected to be
/// valid, and a `#` that is not the last level matches nothing.
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && starts_with_wildcard(filter) {
        return false;
    }

    let mut topic_levels = topic.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return filter_levels.next().is_none(),
            (Some("+"), Some(_)) => {}
            (Some(filter_level), Some(topic_level)) if filter_level == topic_level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Returns whether every topic matched by filter `narrow` is also matched by filter `wide`.
///
/// A filter covers itself, `a/#` covers `a`, `a/+/c` and `a/#`, and `a/+` covers `a/b` but
/// not `a/#` (which also matches `a` and `a/b/c`). The result is exact for valid filters,
/// so a caller can drop `narrow` from a set that contains `wide` without losing a message.
pub fn covers(wide: &str, narrow: &str) -> bool {
    // A narrow filter whose first level is a literal starting with '$' only matches
    // '$' topics, and a wide filter that starts with a wildcard matches none of them.
    if starts_with_wildcard(wide) && narrow.starts_with('$') {
        return false;
    }

    // Every topic has at least one level, so a lone `#` matches exactly what `+/#` matches.
    // Rewriting it lets the level walk below treat `#` as "this level or deeper" throughout.
    let narrow = if narrow == "#" { "+/#" } else { narrow };

    let mut wide_levels = wide.split('/');
    let mut narrow_levels = narrow.split('/');
    loop {
        match (wide_levels.next(), narrow_levels.next()) {
            (Some("#"), _) => return wide_levels.next().is_none(),
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(wide_level), Some(narrow_level)) if wide_level == narrow_level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn starts_with_wildcard(filter: &str) -> bool {
    filter.starts_with('+') || filter.starts_with('#')
}

fn is_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FilterLimits = FilterLimits {
        max_bytes: 64,
        max_levels: 8,
    };

    #[test]
    fn validate_filter_accepts_valid_filters() {
        let cases = [
            "all",
            "twitter/hashtag/fossasia",
            "twitter/hashtag/日本",
            "sensors/room1",
            "/pub/env",
            "a//b",
            "a/",
            "/",
            "+",
            "#",
            "+/+",
            "twitter/+/x",
            "twitter/#",
            "+/pub/#",
            "a/b/c/d/e/f/g/h",
            "a\u{A0}b",
        ];
        for filter in cases {
            assert_eq!(
                validate_filter(filter, &LIMITS),
                Ok(()),
                "filter {filter:?}"
            );
        }
    }

    #[test]
    fn validate_filter_rejects_invalid_filters() {
        let long = "a".repeat(65);
        let cases = [
            ("", FilterError::Empty),
            (long.as_str(), FilterError::TooLong { len: 65, max: 64 }),
            (
                "a/b/c/d/e/f/g/h/i",
                FilterError::TooManyLevels { levels: 9, max: 8 },
            ),
            ("////////", FilterError::TooManyLevels { levels: 9, max: 8 }),
            ("a/#/b", FilterError::MisplacedMultiLevelWildcard),
            ("#/b", FilterError::MisplacedMultiLevelWildcard),
            ("a/b#", FilterError::MisplacedMultiLevelWildcard),
            ("a#", FilterError::MisplacedMultiLevelWildcard),
            ("a/#b", FilterError::MisplacedMultiLevelWildcard),
            ("a+", FilterError::MisplacedSingleLevelWildcard),
            ("a/+b/c", FilterError::MisplacedSingleLevelWildcard),
            ("a/++", FilterError::MisplacedSingleLevelWildcard),
            ("a\0b", FilterError::ControlCharacter),
            ("a\nb", FilterError::ControlCharacter),
            ("a\rb", FilterError::ControlCharacter),
            ("a\u{1F}", FilterError::ControlCharacter),
            ("a\u{7F}", FilterError::ControlCharacter),
            ("a\u{80}b", FilterError::ControlCharacter),
            ("a\u{9F}b", FilterError::ControlCharacter),
            ("$SYS/#", FilterError::Reserved),
            ("$share/group/twitter/#", FilterError::Reserved),
            ("$", FilterError::Reserved),
        ];
        for (filter, expected) in cases {
            assert_eq!(
                validate_filter(filter, &LIMITS),
                Err(expected),
                "filter {filter:?}"
            );
        }
    }

    #[test]
    fn validate_filter_counts_bytes_not_chars() {
        let limits = FilterLimits {
            max_bytes: 5,
            max_levels: 8,
        };
        let cases = [
            ("日a", Ok(())),
            ("日本", Err(FilterError::TooLong { len: 6, max: 5 })),
        ];
        for (filter, expected) in cases {
            assert_eq!(
                validate_filter(filter, &limits),
                expected,
                "filter {filter:?}"
            );
        }
    }

    #[test]
    fn validate_topic_accepts_valid_topics() {
        let longest = "a".repeat(65_535);
        let cases = [
            "all",
            "twitter/hashtag/日本",
            "/pub/env",
            "a//b",
            "$SYS/x",
            longest.as_str(),
        ];
        for topic in cases {
            assert_eq!(
                validate_topic(topic),
                Ok(()),
                "topic {:?}",
                truncated(topic)
            );
        }
    }

    #[test]
    fn validate_topic_rejects_invalid_topics() {
        let too_long = "a".repeat(65_536);
        let cases = [
            ("", TopicError::Empty),
            (too_long.as_str(), TopicError::TooLong { len: 65_536 }),
            ("a/+", TopicError::Wildcard('+')),
            ("a/b+c", TopicError::Wildcard('+')),
            ("#", TopicError::Wildcard('#')),
            ("twitter/hashtag/#x", TopicError::Wildcard('#')),
            ("a\0b", TopicError::Nul),
            ("a/#\0", TopicError::Wildcard('#')),
        ];
        for (topic, expected) in cases {
            assert_eq!(
                validate_topic(topic),
                Err(expected),
                "topic {:?}",
                truncated(topic)
            );
        }
    }

    #[test]
    fn matches_follows_mqtt_rules() {
        let cases = [
            ("a", "a", true),
            ("a", "b", false),
            ("a/b", "a", false),
            ("a", "a/b", false),
            ("a/b", "a/+", true),
            ("a/b/c", "a/+", false),
            ("a", "a/+", false),
            ("a/", "a/+", true),
            ("a/b/c", "a/+/c", true),
            ("a/b/d", "a/+/c", false),
            ("a", "a/#", true),
            ("a/b", "a/#", true),
            ("a/b/c", "a/#", true),
            ("ab", "a/#", false),
            ("b/a", "a/#", false),
            ("a", "#", true),
            ("a/b/c", "#", true),
            ("a/b/c", "+/#", true),
            ("a", "+/#", true),
            ("/pub/env", "+/pub/env", true),
            ("/pub/env", "#", true),
            ("/pub/env", "/pub/env", true),
            ("/pub/env", "pub/env", false),
            ("/pub/env", "+/+", false),
            ("/pub/env", "/+/env", true),
            ("a//b", "a/+/b", true),
            ("a//b", "a/b", false),
            ("twitter/hashtag/日本", "twitter/hashtag/+", true),
            ("twitter/hashtag/日本", "twitter/hashtag/日", false),
            ("$SYS/uptime", "#", false),
            ("$SYS/uptime", "+/uptime", false),
            ("$SYS/uptime", "$SYS/#", true),
            ("$SYS/uptime", "$SYS/+", true),
            ("a/$x", "a/+", true),
            ("a/b", "a/#/b", false),
            ("Twitter", "twitter", false),
        ];
        for (topic, filter, expected) in cases {
            assert_eq!(
                matches(topic, filter),
                expected,
                "matches({topic:?}, {filter:?})"
            );
        }
    }

    #[test]
    fn covers_holds_only_for_supersets() {
        let cases = [
            ("twitter/#", "twitter/hashtag/x", true),
            ("twitter/#", "twitter/+/x", true),
            ("twitter/#", "twitter", true),
            ("twitter/#", "twitter/#", true),
            ("twitter/#", "twitter/hashtag/#", true),
            ("twitter/#", "twitterx", false),
            ("twitter/#", "mastodon/#", false),
            ("twitter/#", "+/hashtag/x", false),
            ("twitter/#", "#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/b", "a/b", true),
            ("a/b", "a/+", false),
            ("a/b", "a/#", false),
            ("+/b", "a/#", false),
            ("+/b", "a/b", true),
            ("+/+", "a/b", true),
            ("+/+", "+/b", true),
            ("+/+", "a", false),
            ("+/#", "a", true),
            ("+/#", "#", true),
            ("+/#", "+/#", true),
            ("+/+/#", "#", false),
            ("#", "a/b/c", true),
            ("#", "+", true),
            ("#", "/pub/env", true),
            ("#", "#", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
            ("a//c", "a/+/c", false),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
        ];
        for (wide, narrow, expected) in cases {
            assert_eq!(
                covers(wide, narrow),
                expected,
                "covers({wide:?}, {narrow:?})"
            );
        }
    }

    /// Checks `covers` against `matches` on every pair of sample filters: a true result must
    /// have no sample topic that only `narrow` matches, and a false one must have one.
    #[test]
    fn covers_agrees_with_matches_on_sample_topics() {
        let filters = [
            "a", "b", "a/b", "a/c", "a/+", "+/b", "+/+", "a/#", "+/#", "#", "+", "a/b/c", "a/+/c",
            "a/b/#", "", "/b", "+/", "$s", "$s/#", "$s/+",
        ];
        let topics = [
            "a", "b", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "a/b/c/d", "", "/b", "a/", "b/", "//",
            "$s", "$s/b", "$s/b/c",
        ];
        for wide in filters {
            for narrow in filters {
                let counterexample = topics
                    .iter()
                    .find(|topic| matches(topic, narrow) && !matches(topic, wide));
                if covers(wide, narrow) {
                    assert_eq!(
                        counterexample, None,
                        "covers({wide:?}, {narrow:?}) is true but a topic matches only narrow"
                    );
                } else {
                    assert!(
                        counterexample.is_some(),
                        "covers({wide:?}, {narrow:?}) is false but no sample topic shows why"
                    );
                }
            }
        }
    }

    fn truncated(text: &str) -> &str {
        text.get(..32).unwrap_or(text)
    }
}
