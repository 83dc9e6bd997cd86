//! Channel derivation: the MQTT topics one accepted message is published to.
//!
//! Every derived topic is a valid MQTT topic name whose levels are non-empty, lower-cased,
//! at most 200 bytes long, and free of `+`, `#`, `/` and control characters, and no topic
//! starts with '$'. Derivation runs once per message, so it scans the text without regular
//! expressions and, apart from a few buffers, allocates only the topics it returns.

use std::collections::HashSet;

/// How channels are derived, from `stream.channels.*`.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// Whether each word of the text gets a `<source>/text/<word>` channel.
    pub text_words: bool,
    /// Maximum number of topics per message, `all` included.
    pub max_per_message: usize,
}

/// The message fields that channels come from, borrowed from the parsed message.
#[derive(Debug, Default, Clone)]
pub struct ChannelInput<'a> {
    pub source_type: Option<&'a str>,
    pub screen_name: Option<&'a str>,
    pub text: Option<&'a str>,
    /// Hashtags the collector extracted, with or without a leading '#' or '＃'.
    pub hashtags: Vec<&'a str>,
    /// Mentioned accounts the collector extracted, with or without a leading '@'.
    pub mentions: Vec<&'a str>,
    pub country_code: Option<&'a str>,
}

/// Derived channels, `all` first; `dropped` counts channels cut by `max_per_message`.
///
/// `dropped` also counts channels left out because a level was longer than 200 bytes.
/// Each distinct channel is counted once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Channels {
    pub topics: Vec<String>,
    pub dropped: usize,
}

/// Maximum length of one derived level in bytes. A longer level produces no channel
/// rather than a truncated one, which could equal a real, shorter level.
const MAX_LEVEL_BYTES: usize = 200;

/// Source level used when a message has no usable `source_type`.
const GENERIC_SOURCE: &str = "generic";

/// Derives the topics one message is published to, in a fixed order without duplicates.
///
/// The order is `all`, `<source>`, `<source>/user/<screen_name>`, the hashtags
/// (`<source>/hashtag/<tag>`: first those found in the text, then `input.hashtags`), the
/// mentions (`<source>/mention/<name>`: text, then `input.mentions`),
/// `<source>/country/<code>` and, with `options.text_words`, `<source>/text/<word>` for
/// each word. Within each group the order is that of first appearance. Once
/// `options.max_per_message` topics exist, further channels are counted in `dropped`.
pub fn derive(input: &ChannelInput<'_>, options: &ChannelOptions) -> Channels {
    let mut builder = Builder::new(options.max_per_message);
    builder.add_bare("all");

    let mut source = String::new();
    push_clean_level(&mut source, input.source_type.unwrap_or(""));
    // A first level starting with '$' is reserved for the broker (`$SYS`, `$share`).
    let is_reserved_prefix = |c: char| c == '$' || c.is_whitespace();
    let prefix_len = source.len() - source.trim_start_matches(is_reserved_prefix).len();
    source.drain(..prefix_len);
    if source.is_empty() {
        source.push_str(GENERIC_SOURCE);
    }
    builder.add_source(&source);

    if let Some(screen_name) = input.screen_name {
        builder.add(&source, "user", screen_name);
    }

    let text = input.text.unwrap_or("");
    for_each_hashtag(text, |tag| builder.add(&source, "hashtag", tag));
    for entry in &input.hashtags {
        let tag = entry.strip_prefix(['#', '＃']).unwrap_or(entry);
        builder.add(&source, "hashtag", tag);
    }

    for_each_mention(text, |name| builder.add(&source, "mention", name));
    for entry in &input.mentions {
        builder.add(&source, "mention", account_name(entry));
    }

    if let Some(country_code) = input.country_code {
        builder.add(&source, "country", country_code);
    }

    if options.text_words {
        for_each_word(text, |word| builder.add(&source, "text", word));
    }

    builder.finish()
}

/// Collects topics in order, dropping duplicates and counting what does not fit.
struct Builder {
    topics: Vec<String>,
    dropped: usize,
    max_topics: usize,
    /// Distinct channels already counted in `dropped`, so a repeat is not counted again.
    /// It stays empty, and unallocated, unless a channel is dropped.
    dropped_topics: HashSet<String>,
    /// The topic being built, reused so that duplicates cost no allocation.
    scratch: String,
}

impl Builder {
    fn new(max_topics: usize) -> Self {
        Self {
            topics: Vec::with_capacity(max_topics.min(16)),
            dropped: 0,
            max_topics,
            dropped_topics: HashSet::new(),
            scratch: String::with_capacity(64),
        }
    }

    /// Adds a topic that is used as it is, such as `all`.
    fn add_bare(&mut self, topic: &str) {
        self.scratch.clear();
        self.scratch.push_str(topic);
        self.commit(true);
    }

    /// Adds the `<source>` channel. `source` is already cleaned and non-empty.
    fn add_source(&mut self, source: &str) {
        self.scratch.clear();
        self.scratch.push_str(source);
        self.commit(source.len() <= MAX_LEVEL_BYTES);
    }

    /// Adds `<source>/<kind>/<level>` after cleaning `raw_level`, unless the cleaned level is
    /// empty.
    fn add(&mut self, source: &str, kind: &str, raw_level: &str) {
        self.scratch.clear();
        self.scratch.push_str(source);
        self.scratch.push('/');
        self.scratch.push_str(kind);
        self.scratch.push('/');

        let level_start = self.scratch.len();
        push_clean_level(&mut self.scratch, raw_level);
        let level_bytes = self.scratch.len() - level_start;
        if level_bytes == 0 {
            return;
        }

        self.commit(source.len() <= MAX_LEVEL_BYTES && level_bytes <= MAX_LEVEL_BYTES);
    }

    /// Adds the topic in `scratch` unless it was seen before. A topic that does not fit,
    /// because of the level limit or `max_topics`, is counted in `dropped` instead.
    fn commit(&mut self, levels_fit: bool) {
        let topic = self.scratch.as_str();
        if self.topics.iter().any(|seen| seen == topic) || self.dropped_topics.contains(topic) {
            return;
        }

        if levels_fit && self.topics.len() < self.max_topics {
            self.topics.push(topic.to_owned());
        } else {
            self.dropped_topics.insert(topic.to_owned());
            self.dropped += 1;
        }
    }

    fn finish(self) -> Channels {
        Channels {
            topics: self.topics,
            dropped: self.dropped,
        }
    }
}

/// Appends `raw` to `out` as a topic level: lower-cased, without the characters MQTT
/// forbids in a level (`+`, `#`, `/`, NUL), control characters and U+FFFF, and without
/// whitespace at either end, so that `" TWITTER"` and `"twitter"` give the same level.
///
/// The result equals `str::to_lowercase` of the kept characters, including the final
/// form of Greek sigma, so the same word always gives the same level.
fn push_clean_level(out: &mut String, raw: &str) {
    let start = out.len();
    let mut has_capital_sigma = false;

    for c in raw.chars() {
        if is_forbidden_in_level(c) {
            continue;
        }
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if c == 'Σ' {
            // Its lower case depends on the neighbouring letters, and only
            // `str::to_lowercase` takes them into account.
            has_capital_sigma = true;
            out.push(c);
        } else {
            out.extend(c.to_lowercase());
        }
    }

    if has_capital_sigma {
        let lowered = out[start..].to_lowercase();
        out.truncate(start);
        out.push_str(&lowered);
    }

    let level = &out[start..];
    let trimmed = level.trim();
    if trimmed.len() != level.len() {
        let trimmed = trimmed.to_owned();
        out.truncate(start);
        out.push_str(&trimmed);
    }
}

fn is_forbidden_in_level(c: char) -> bool {
    matches!(c, '+' | '#' | '/' | '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}' | '\u{FFFF}')
}

/// Returns whether `c` can be part of a hashtag, a mention or a word.
///
/// These are the `XID_Continue` characters (letters, marks, digits, connector punctuation)
/// except the emoji presentation selectors U+FE0E and U+FE0F. Those follow emoji, as in
/// `❤️#tag`, and must not glue the emoji to the tag.
fn is_word_char(c: char) -> bool {
    c != '\u{FE0E}' && c != '\u{FE0F}' && unicode_ident::is_xid_continue(c)
}

/// Returns whether a whitespace-separated token is a URL, whose `#fragment` or `@` must not
/// be read as a hashtag or mention.
fn is_url_token(token: &str) -> bool {
    if token.contains("://") {
        return true;
    }

    // Allow opening punctuation such as `(www.example.org)` or `“www.example.org`.
    let bare = token.trim_start_matches(|c: char| !c.is_alphanumeric());
    bare.get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("www."))
}

/// Whitespace-separated tokens of `text` that are not URLs.
fn non_url_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace().filter(|token| !is_url_token(token))
}

/// Calls `found` with the name after each sign in `text` that starts a hashtag or mention.
///
/// A sign counts when the character before it is not a word character and not one of
/// `excluded_before`, and at least one word character follows it. The name is the run of
/// word characters after the sign. URL tokens are skipped.
fn for_each_signed_name<'t>(
    text: &'t str,
    is_sign: fn(char) -> bool,
    excluded_before: &[char],
    mut found: impl FnMut(&'t str),
) {
    // Most texts contain no sign, or few tokens that do. Both tests are cheaper than the URL
    // check, and they skip nothing that could give a name.
    if !text.contains(is_sign) {
        return;
    }
    let signed_tokens = text.split_whitespace().filter(|token| token.contains(is_sign));
    for token in signed_tokens.filter(|token| !is_url_token(token)) {
        let mut previous: Option<char> = None;
        let mut chars = token.chars();

        while let Some(c) = chars.next() {
            let starts_name = is_sign(c)
                && previous.is_none_or(|p| !is_word_char(p) && !excluded_before.contains(&p));
            previous = Some(c);
            if !starts_name {
                continue;
            }

            let rest = chars.as_str();
            let name_len = rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len());
            if name_len == 0 {
                continue;
            }
            let name = &rest[..name_len];
            found(name);

            // Continue after the name. Its last character is a word character, so the next
            // sign directly after it (as in `@user@host`) does not start another name.
            chars = rest[name_len..].chars();
            previous = name.chars().next_back();
        }
    }
}

/// Calls `found` with each hashtag in `text`, without its sign, in order of appearance.
///
/// The sign is `#` or fullwidth `＃`. It must not follow a word character (`abc#def`) or `&`
/// (the entity `&#39;`), and the tag must hold at least one non-numeric character, so
/// `#1` is not a tag. A `#` inside a URL, such as `https://example.org/page#section`,
/// is not a tag either.
fn for_each_hashtag<'t>(text: &'t str, mut found: impl FnMut(&'t str)) {
    for_each_signed_name(
        text,
        |c| c == '#' || c == '＃',
        &['&'],
        |tag| {
            if !tag.chars().all(char::is_numeric) {
                found(tag);
            }
        },
    );
}

/// Calls `found` with each @mention in `text`, without the `@`, in order of appearance.
///
/// The `@` must not follow a word character, `-` or `+`, so e-mail addresses such as
/// `a.b@example.org` are not mentions. The `.@name` form of a public reply is a mention,
/// as on Twitter. For a Mastodon address `@user@host.social` only `user` is returned.
fn for_each_mention<'t>(text: &'t str, found: impl FnMut(&'t str)) {
    for_each_signed_name(text, |c| c == '@', &['-', '+'], found);
}

/// Returns the account name of a collector-supplied mention: without a leading '@' and, for
/// a Mastodon address `user@host.social`, without the `@host` part, like a text mention.
fn account_name(entry: &str) -> &str {
    let name = entry.strip_prefix('@').unwrap_or(entry);
    name.split('@').next().unwrap_or(name)
}

/// Calls `found` with each word of `text` that has more than two characters and at least
/// one alphabetic character. Words are runs of word characters outside URL tokens.
fn for_each_word<'t>(text: &'t str, mut found: impl FnMut(&'t str)) {
    for token in non_url_tokens(text) {
        for word in token.split(|c: char| !is_word_char(c)) {
            let long_enough = word.chars().nth(2).is_some();
            if long_enough && word.chars().any(char::is_alphabetic) {
                found(word);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_OPTIONS: ChannelOptions = ChannelOptions {
        text_words: false,
        max_per_message: 1000,
    };

    /// One message and the full channel list expected for it.
    struct Case {
        name: &'static str,
        source_type: Option<&'static str>,
        screen_name: Option<&'static str>,
        text: &'static str,
        expected: &'static [&'static str],
    }

    fn derive_case(case: &Case, options: &ChannelOptions) -> Channels {
        let input = ChannelInput {
            source_type: case.source_type,
            screen_name: case.screen_name,
            text: Some(case.text),
            ..ChannelInput::default()
        };
        derive(&input, options)
    }

    fn assert_cases(cases: &[Case], options: &ChannelOptions) {
        for case in cases {
            let channels = derive_case(case, options);
            assert_eq!(
                channels.topics, case.expected,
                "case {}: text {:?}",
                case.name, case.text
            );
            assert_eq!(channels.dropped, 0, "case {}: dropped", case.name);
        }
    }

    /// Texts copied from the real message corpus, with their author and source.
    #[test]
    fn derive_handles_real_messages() {
        let cases = [
            Case {
                name: "japanese tags after a url",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1363"),
                text: "天冥の標 VI 宿怨 PART1 / 小川 一水\nhttp://j.mp/1kHBOym\n \n#キンドル #天冥の標VI宿怨PART1",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_1363",
                    "twitter/hashtag/キンドル",
                    "twitter/hashtag/天冥の標vi宿怨part1",
                ],
            },
            Case {
                name: "japanese tags in brackets with prolonged sound mark",
                source_type: Some("TWITTER"),
                screen_name: Some("user_0767"),
                text: "🍕🍕🍕 今日は #ピザの日 🍕🍕🍕\n\nピザと一緒に飲みたい飲み物はどっち⁉️\nいいね or RTで答えてね🤤💕\n\n「#オールフリー」の人👉いいね❤️\n「#ペプシ」の人👉RT💫 https://example.org/user_0767/status/932382987873865729/photo/1",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_0767",
                    "twitter/hashtag/ピザの日",
                    "twitter/hashtag/オールフリー",
                    "twitter/hashtag/ペプシ",
                ],
            },
            Case {
                name: "japanese tag before fullwidth exclamation marks",
                source_type: Some("TWITTER"),
                screen_name: Some("user_0763"),
                text: "げっそりげそげそげつようび～♪\n\n╭◜◝ ͡ ◜◝ ╮\n( ヽ´ω` )🍕\n╰◟◞ ͜ ◟◞ ╯\n\n今日は #ピザの日！！\n(｀・ω・´)🍕🍫ｼｬｷｰﾝ",
                expected: &["all", "twitter", "twitter/user/user_0763", "twitter/hashtag/ピザの日"],
            },
            Case {
                name: "tag after ideographic space and brackets",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1375"),
                text: "【マイリスト】【彩りりあ】妖怪体操第一\u{3000}踊ってみた【反転】 http://nico.ms/sm24357625 #sm24357625",
                expected: &["all", "twitter", "twitter/user/user_1375", "twitter/hashtag/sm24357625"],
            },
            Case {
                name: "mentions after fullwidth punctuation and curly quote",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1270"),
                text: "ありがとうございます！“@user_1269: @user_1270 13時半ごろ一雨きそうですが、無事全車決勝レース完走出来ること祈ってます！ https://example.org/user_1269/status/505868690588303360/photo/1”",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_1270",
                    "twitter/mention/user_1269",
                    "twitter/mention/user_1270",
                ],
            },
            Case {
                name: "arabic tags with underscores",
                source_type: Some("TWITTER"),
                screen_name: Some("user_0269"),
                text: "#سأكتب_لك \nجوهرتي\nاذا الأقدار لم ترحمنا\nدع ارواحنا \nهي انقى ما عندنا\nبالدعاء تجمعنا\n#ضياء \n#منبر_الحرف https://example.org/user_0269/status/690280014315659264/photo/1",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_0269",
                    "twitter/hashtag/سأكتب_لك",
                    "twitter/hashtag/ضياء",
                    "twitter/hashtag/منبر_الحرف",
                ],
            },
            Case {
                name: "latin tags mixed with an arabic tag",
                source_type: Some("TWITTER"),
                screen_name: Some("user_3041"),
                text: "#GraceAlchini: I #JustBought #TeachingLexically: #Principles & #Practice #by #HughDellar #EtAl. \n#Amazon \n#Teaching\n#Lexically \n#EFL \n#هـ https://example.org/user_3040/status/803647228728537089",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_3041",
                    "twitter/hashtag/gracealchini",
                    "twitter/hashtag/justbought",
                    "twitter/hashtag/teachinglexically",
                    "twitter/hashtag/principles",
                    "twitter/hashtag/practice",
                    "twitter/hashtag/by",
                    "twitter/hashtag/hughdellar",
                    "twitter/hashtag/etal",
                    "twitter/hashtag/amazon",
                    "twitter/hashtag/teaching",
                    "twitter/hashtag/lexically",
                    "twitter/hashtag/efl",
                    "twitter/hashtag/هـ",
                ],
            },
            Case {
                name: "accented tag between emoji",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1573"),
                text: "Gran victoria y un gran trabajo de todo el equipo. 💪👍⚽️⚽️🔴🔵 #forçabarça 😉 https://example.org/user_1573/status/592023974923632640/photo/1",
                expected: &["all", "twitter", "twitter/user/user_1573", "twitter/hashtag/forçabarça"],
            },
            Case {
                name: "turkish tag lower-cased",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1517"),
                text: "Halbuki Acılar çoğaldıkça,sabır da çoğalmalı. İnsanlar birbirlerine yaslanmalı #YediGüzelAdam",
                expected: &["all", "twitter", "twitter/user/user_1517", "twitter/hashtag/yedigüzeladam"],
            },
            Case {
                name: "tag glued to punctuation in a retweet",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1379"),
                text: "RT @user_1562: Hoy día especial,un año que se marcho pero siempre en nuestra memoria,Gracias Tito.\nGrande Equipo!Vamos!!#ForçaBarça. http:/…",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_1379",
                    "twitter/hashtag/forçabarça",
                    "twitter/mention/user_1562",
                ],
            },
            Case {
                name: "retweet with truncated tag",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1377"),
                text: "RT @user_1888: #videoconverter.js is a #program that lets you process #videos in your #browser | http://bit.ly/1EJhqVL - #js #javascript #…",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_1377",
                    "twitter/hashtag/videoconverter",
                    "twitter/hashtag/program",
                    "twitter/hashtag/videos",
                    "twitter/hashtag/browser",
                    "twitter/hashtag/js",
                    "twitter/hashtag/javascript",
                    "twitter/mention/user_1888",
                ],
            },
            Case {
                name: "retweet without tags",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1187"),
                text: "RT @user_1186: If corporations are people, can we use them to drive in the carpool lane?",
                expected: &["all", "twitter", "twitter/user/user_1187", "twitter/mention/user_1186"],
            },
            Case {
                name: "url fragment is not a tag",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1626"),
                text: "Software Engineer 2 in PayPal Credit @user_1630 US, Timonium, Maryland http://www.siliconarmada.com/6638/Software-Engineer-2-in-PayPal-Credit.html#.VTvQZh74b-g.twitter #Java in #Linux #Solaris enviroment #nodejs #Grails",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_1626",
                    "twitter/hashtag/java",
                    "twitter/hashtag/linux",
                    "twitter/hashtag/solaris",
                    "twitter/hashtag/nodejs",
                    "twitter/hashtag/grails",
                    "twitter/mention/user_1630",
                ],
            },
            Case {
                name: "url fragment at the start of the text",
                source_type: Some("TWITTER"),
                screen_name: Some("user_2744"),
                text: "http://www.thegatewaypundit.com/2016/11/conservative-purge-begins-apple-removes-breitbart-app-store/#disqus_thread Is @user_2496 really banning @user_2495 ? I will be glad to buy another phone. #boycottapple",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_2744",
                    "twitter/hashtag/boycottapple",
                    "twitter/mention/user_2496",
                    "twitter/mention/user_2495",
                ],
            },
            Case {
                name: "url fragment followed by a query",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1595"),
                text: "6件のコメント http://b.hatena.ne.jp/entry/postd.cc/how-is-angular-js-different-from-jquery/#tw?u=progd “Q. AngularJSとjQueryの違いは何でしょうか？ | POSTD” http://htn.to/Qd9tmx",
                expected: &["all", "twitter", "twitter/user/user_1595"],
            },
            Case {
                name: "email address is not a mention",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1531"),
                text: "Nabídka práce! :D Zájemci na mail pls email_002@example.org nebo na FB do zpráv. #job #nette #php #jquery #nodejs https://www.facebook.com/Fiola/posts/10205518749501174",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_1531",
                    "twitter/hashtag/job",
                    "twitter/hashtag/nette",
                    "twitter/hashtag/php",
                    "twitter/hashtag/jquery",
                    "twitter/hashtag/nodejs",
                ],
            },
            Case {
                name: "reply mentioning an email address",
                source_type: Some("TWITTER"),
                screen_name: Some("user_3629"),
                text: "@user_3628 Hola Alejandra. Gracias por tu reporte. Ayúdanos a mejorar escribiendo a email_004@example.org ¡Saludos!",
                expected: &["all", "twitter", "twitter/user/user_3629", "twitter/mention/user_3628"],
            },
            Case {
                name: "dot before mention",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1415"),
                text: ".@user_1475 stores reopen after computer glitch http://yhoo.it/1ECu0Jf",
                expected: &["all", "twitter", "twitter/user/user_1415", "twitter/mention/user_1475"],
            },
            Case {
                name: "tags glued to emoji",
                source_type: Some("TWITTER"),
                screen_name: Some("user_2198"),
                text: "So in love #Selena💁🏻 #Comolaflor🌹#MACSelena💄 https://example.org/user_2197/status/782031958008172548/photo/1",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_2198",
                    "twitter/hashtag/selena",
                    "twitter/hashtag/comolaflor",
                    "twitter/hashtag/macselena",
                ],
            },
            Case {
                name: "mention after emoji with variation selectors",
                source_type: Some("TWITTER"),
                screen_name: Some("user_3772"),
                text: "i❤️️@user_2496 @user_3773 THANK U for everything https://example.org/user_3772/status/803966878754492420/photo/1",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_3772",
                    "twitter/mention/user_2496",
                    "twitter/mention/user_3773",
                ],
            },
            Case {
                name: "emoji joined by zero width joiners",
                source_type: Some("TWITTER"),
                screen_name: Some("user_2287"),
                text: "Conozca aquí a todos nuestros invitados de #fiiSAntofagasta #UnaNuevaRealidad 😎😀👨\u{200d}👨\u{200d}👧\u{200d}👧🎼 https://example.org/user_2287/status/781518591069982721/photo/1",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_2287",
                    "twitter/hashtag/fiisantofagasta",
                    "twitter/hashtag/unanuevarealidad",
                ],
            },
            Case {
                name: "private use emoji",
                source_type: Some("TWITTER"),
                screen_name: Some("user_2411"),
                text: "#Defqon1 and #RedBull #ThreeStyle here we come in December \u{fe327}\u{fe813} #Gift ☺️",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_2411",
                    "twitter/hashtag/defqon1",
                    "twitter/hashtag/redbull",
                    "twitter/hashtag/threestyle",
                    "twitter/hashtag/gift",
                ],
            },
            Case {
                name: "carriage returns between mentions and tags",
                source_type: Some("TWITTER"),
                screen_name: Some("user_2510"),
                text: "@user_2496 🍎\rDeleting @user_2495 from #AppleStore is #fascism.\r#FirstAmendment vs #totalitarianism \r@user_2511 \r@user_2513",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_2510",
                    "twitter/hashtag/applestore",
                    "twitter/hashtag/fascism",
                    "twitter/hashtag/firstamendment",
                    "twitter/hashtag/totalitarianism",
                    "twitter/mention/user_2496",
                    "twitter/mention/user_2495",
                    "twitter/mention/user_2511",
                    "twitter/mention/user_2513",
                ],
            },
            Case {
                name: "numeric tags are not tags",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1477"),
                text: "Clustering Using #Docker #Swarm 0.2.0 (Tech Tip #85 by @user_1476 )  http://ow.ly/LZXlb #JBoss",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_1477",
                    "twitter/hashtag/docker",
                    "twitter/hashtag/swarm",
                    "twitter/hashtag/jboss",
                    "twitter/mention/user_1476",
                ],
            },
            Case {
                name: "html entity and mention",
                source_type: Some("TWITTER"),
                screen_name: Some("user_1918"),
                text: "Unterst&uuml;tzung bei der Programmierung von Webseiten w/ #AngularJS #jQuery skills Düsseldorf @user_1919 http://bit.ly/1bQkCEM",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_1918",
                    "twitter/hashtag/angularjs",
                    "twitter/hashtag/jquery",
                    "twitter/mention/user_1919",
                ],
            },
            Case {
                name: "c1 control characters from mojibake",
                source_type: Some("TWITTER"),
                screen_name: Some("user_3023"),
                text: "Lego city - Le Commissariat De Police à 59.9\u{80} (50.91\u{80} pour les Premium) au lieu de 74.99\u{80} @user_1449 http://serialdealer.fr/deal-41061.htm #bonplan",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_3023",
                    "twitter/hashtag/bonplan",
                    "twitter/mention/user_1449",
                ],
            },
            Case {
                name: "mastodon status with a www link",
                source_type: Some("MASTODON"),
                screen_name: Some("user_5096"),
                text: "#FunFact\n\nMamot ça n'est pas simplement l'instance #Mastodon de @user_5108, c'est aussi le \n\nMinistère des Affaires Municipales et de l'Occupation du Territoire canadien ;) \n\nhttp://www.mamot.gouv.qc.ca/accueil/",
                expected: &[
                    "all",
                    "mastodon",
                    "mastodon/user/user_5096",
                    "mastodon/hashtag/funfact",
                    "mastodon/hashtag/mastodon",
                    "mastodon/mention/user_5108",
                ],
            },
            Case {
                name: "devanagari text after mentions",
                source_type: Some("TWITTER"),
                screen_name: Some("user_3627"),
                text: "@user_3112 @user_3115 @user_3113 @user_3114 @user_1449  \nअरे वाह",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_3627",
                    "twitter/mention/user_3112",
                    "twitter/mention/user_3115",
                    "twitter/mention/user_3113",
                    "twitter/mention/user_3114",
                    "twitter/mention/user_1449",
                ],
            },
        ];
        assert_cases(&cases, &DEFAULT_OPTIONS);
    }

    #[test]
    fn derive_handles_edge_cases() {
        let cases = [
            Case {
                name: "devanagari tag with combining marks",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "नमस्ते #हिन्दी_दिवस और #भारत",
                expected: &["all", "twitter", "twitter/hashtag/हिन्दी_दिवस", "twitter/hashtag/भारत"],
            },
            Case {
                name: "fullwidth number sign",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "今日は ＃ラーメン、明日は #寿司",
                expected: &["all", "twitter", "twitter/hashtag/ラーメン", "twitter/hashtag/寿司"],
            },
            Case {
                name: "tag preceded by a word character or ampersand",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "abc#def it&#39;s C#sharp #ok",
                expected: &["all", "twitter", "twitter/hashtag/ok"],
            },
            Case {
                name: "numeric tags",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "#1 #２０２４ #١٢ #2024年 #1a",
                expected: &["all", "twitter", "twitter/hashtag/2024年", "twitter/hashtag/1a"],
            },
            Case {
                name: "keycap emoji is not a tag",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "press #\u{fe0f}\u{20e3} now",
                expected: &["all", "twitter"],
            },
            Case {
                name: "tag after emoji with variation selector",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "❤️#Love",
                expected: &["all", "twitter", "twitter/hashtag/love"],
            },
            Case {
                name: "url fragments",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "https://example.org/page#section http://x.org/#/route www.example.org/#top (WWW.example.org#x) #real",
                expected: &["all", "twitter", "twitter/hashtag/real"],
            },
            Case {
                name: "mastodon address",
                source_type: Some("MASTODON"),
                screen_name: None,
                text: "cc @alice@mastodon.social and @bob@example.org",
                expected: &["all", "mastodon", "mastodon/mention/alice", "mastodon/mention/bob"],
            },
            Case {
                name: "email addresses and handles after punctuation",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "a.b@c.d x-@y z+@w email_001@example.org (@paren) @Mixed_Case",
                expected: &["all", "twitter", "twitter/mention/paren", "twitter/mention/mixed_case"],
            },
            Case {
                name: "duplicates differing in case",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "#Rust #rust #RUST @Ann @ann",
                expected: &["all", "twitter", "twitter/hashtag/rust", "twitter/mention/ann"],
            },
            Case {
                name: "greek final sigma",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "#ΟΔΟΣ #ΣΟΦΙΑ",
                expected: &["all", "twitter", "twitter/hashtag/οδος", "twitter/hashtag/σοφια"],
            },
        ];
        assert_cases(&cases, &DEFAULT_OPTIONS);
    }

    #[test]
    fn derive_with_text_words() {
        let options = ChannelOptions {
            text_words: true,
            max_per_message: 1000,
        };
        let cases = [
            Case {
                name: "spanish text with carriage return",
                source_type: Some("TWITTER"),
                screen_name: Some("user_2327"),
                text: "Este #Defqon1 Chile \rLa zona Black se pone re copada con lo mejor del hardcore✊",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/user/user_2327",
                    "twitter/hashtag/defqon1",
                    "twitter/text/este",
                    "twitter/text/defqon1",
                    "twitter/text/chile",
                    "twitter/text/zona",
                    "twitter/text/black",
                    "twitter/text/pone",
                    "twitter/text/copada",
                    "twitter/text/con",
                    "twitter/text/mejor",
                    "twitter/text/del",
                    "twitter/text/hardcore",
                ],
            },
            Case {
                name: "urls numbers and short words skipped",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "RT @user_1186: Go to https://example.org/page#x or www.example.org, now! 2024 a1b 12 Now",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/mention/user_1186",
                    "twitter/text/user_1186",
                    "twitter/text/now",
                    "twitter/text/a1b",
                ],
            },
            Case {
                name: "unicode words",
                source_type: Some("TWITTER"),
                screen_name: None,
                text: "Düsseldorf, 東京都！ مرحبا ab",
                expected: &[
                    "all",
                    "twitter",
                    "twitter/text/düsseldorf",
                    "twitter/text/東京都",
                    "twitter/text/مرحبا",
                ],
            },
        ];
        assert_cases(&cases, &options);
    }

    #[test]
    fn derive_without_text_words_adds_no_word_channels() {
        let case = Case {
            name: "spanish text",
            source_type: Some("TWITTER"),
            screen_name: Some("user_2327"),
            text:
                "Este #Defqon1 Chile \rLa zona Black se pone re copada con lo mejor del hardcore✊",
            expected: &[
                "all",
                "twitter",
                "twitter/user/user_2327",
                "twitter/hashtag/defqon1",
            ],
        };
        assert_cases(&[case], &DEFAULT_OPTIONS);
    }

    #[test]
    fn derive_names_the_source() {
        let cases = [
            (None, "generic"),
            (Some(""), "generic"),
            (Some("  "), "generic"),
            (Some(" Twitter\t"), "twitter"),
            (Some("$ x"), "x"),
            (Some("TWITTER"), "twitter"),
            (Some("Mastodon"), "mastodon"),
            (Some("$SYS"), "sys"),
            (Some("$$share"), "share"),
            (Some("$"), "generic"),
            (Some("#+/"), "generic"),
            (Some("a/b+c#d"), "abcd"),
            (Some("x\0\u{1}\u{7f}\u{85}\u{ffff}y"), "xy"),
        ];
        for (source_type, expected) in cases {
            let input = ChannelInput {
                source_type,
                ..ChannelInput::default()
            };
            let channels = derive(&input, &DEFAULT_OPTIONS);
            assert_eq!(
                channels.topics,
                ["all", expected],
                "source_type {source_type:?}"
            );
        }
    }

    #[test]
    fn derive_cleans_screen_names() {
        let cases = [
            ("user/name", Some("twitter/user/username")),
            ("a+b", Some("twitter/user/ab")),
            ("User_0051", Some("twitter/user/user_0051")),
            ("#1", Some("twitter/user/1")),
            ("Ünal", Some("twitter/user/ünal")),
            (" user_0051 ", Some("twitter/user/user_0051")),
            ("/+#", None),
            ("", None),
        ];
        for (screen_name, expected) in cases {
            let input = ChannelInput {
                source_type: Some("TWITTER"),
                screen_name: Some(screen_name),
                ..ChannelInput::default()
            };
            let channels = derive(&input, &DEFAULT_OPTIONS);
            let user_topic = channels.topics.get(2).map(String::as_str);
            assert_eq!(user_topic, expected, "screen_name {screen_name:?}");
        }
    }

    #[test]
    fn derive_uses_collector_fields_after_text() {
        let input = ChannelInput {
            source_type: Some("twitter"),
            screen_name: Some("Poster"),
            text: Some("#FromText @from_text"),
            hashtags: vec!["#fromtext", "Entity", "＃全角", "#", "a/b"],
            mentions: vec!["@From_Text", "other", "@carol@example.social", "@"],
            country_code: Some("DE"),
        };
        let channels = derive(&input, &DEFAULT_OPTIONS);
        let expected = [
            "all",
            "twitter",
            "twitter/user/poster",
            "twitter/hashtag/fromtext",
            "twitter/hashtag/entity",
            "twitter/hashtag/全角",
            "twitter/hashtag/ab",
            "twitter/mention/from_text",
            "twitter/mention/other",
            "twitter/mention/carol",
            "twitter/country/de",
        ];
        assert_eq!(channels.topics, expected);
    }

    /// The corpus reply that starts with 50 mentions.
    const FIFTY_MENTIONS: &str = "@user_0527 @user_0528 @user_0529 @user_0530 @user_0531 @user_0532 @user_0533 @user_0534 @user_0535 @user_0536 @user_0537 @user_0538 @user_0539 @user_0540 @user_0541 @user_0542 @user_0543 @user_0544 @user_0545 @user_0546 @user_0547 @user_0548 @user_0549 @user_0550 @user_0551 @user_0552 @user_0553 @user_0554 @user_0555 @user_0556 @user_0557 @user_0558 @user_0559 @user_0560 @user_0561 @user_0562 @user_0563 @user_0564 @user_0565 @user_0566 @user_0567 @user_0568 @user_0569 @user_0570 @user_0571 @user_0572 @user_0573 @user_0574 @user_0575 @user_0576 Anyone moronic enough to commence a tweet with \"So, basically\" would probably have been whining and whinging for another referendum on 19th September 2014?";

    fn fifty_mentions_expected() -> Vec<String> {
        let mut expected = vec![
            "all".to_owned(),
            "twitter".to_owned(),
            "twitter/user/user_0577".to_owned(),
        ];
        expected.extend((527..=576).map(|n| format!("twitter/mention/user_{n:04}")));
        expected
    }

    #[test]
    fn derive_keeps_fifty_mentions_under_a_high_limit() {
        let input = ChannelInput {
            source_type: Some("TWITTER"),
            screen_name: Some("user_0577"),
            text: Some(FIFTY_MENTIONS),
            ..ChannelInput::default()
        };
        let channels = derive(&input, &DEFAULT_OPTIONS);
        assert_eq!(channels.topics, fifty_mentions_expected());
        assert_eq!(channels.dropped, 0);
    }

    #[test]
    fn derive_cuts_at_max_per_message() {
        let input = ChannelInput {
            source_type: Some("TWITTER"),
            screen_name: Some("user_0577"),
            text: Some(FIFTY_MENTIONS),
            // Repeats of kept and of dropped channels must not be counted again.
            mentions: vec!["user_0527", "user_0576", "user_0576"],
            ..ChannelInput::default()
        };
        let all_channels = fifty_mentions_expected();
        let cases = [(1, 52), (3, 50), (20, 33), (53, 0), (100, 0)];
        for (max_per_message, dropped) in cases {
            let options = ChannelOptions {
                text_words: false,
                max_per_message,
            };
            let channels = derive(&input, &options);
            let kept = max_per_message.min(all_channels.len());
            assert_eq!(
                channels.topics,
                all_channels[..kept],
                "max_per_message {max_per_message}"
            );
            assert_eq!(
                channels.dropped, dropped,
                "max_per_message {max_per_message}: dropped"
            );
        }
    }

    #[test]
    fn derive_drops_levels_over_200_bytes() {
        let longest_tag = "a".repeat(200);
        let too_long_tag = "b".repeat(201);
        // 67 three-byte characters: 201 bytes but only 67 characters.
        let too_long_japanese = "本".repeat(67);
        let text =
            format!("#{longest_tag} #{too_long_tag} #{too_long_japanese} #{too_long_tag} #ok");
        let input = ChannelInput {
            source_type: Some("twitter"),
            text: Some(&text),
            ..ChannelInput::default()
        };

        let channels = derive(&input, &DEFAULT_OPTIONS);

        let expected = [
            "all".to_owned(),
            "twitter".to_owned(),
            format!("twitter/hashtag/{longest_tag}"),
            "twitter/hashtag/ok".to_owned(),
        ];
        assert_eq!(channels.topics, expected);
        assert_eq!(channels.dropped, 2);
    }

    #[test]
    fn derive_drops_overlong_source_channels() {
        let source = "s".repeat(201);
        let input = ChannelInput {
            source_type: Some(&source),
            screen_name: Some("someone"),
            text: Some("#tag"),
            ..ChannelInput::default()
        };
        let channels = derive(&input, &DEFAULT_OPTIONS);
        assert_eq!(channels.topics, ["all"]);
        assert_eq!(channels.dropped, 3);
    }

    /// Derives channels for every message of the real corpus, with text words on, and checks
    /// that each topic is one the broker accepts and a client can subscribe to literally.
    #[test]
    fn derive_yields_valid_topics_for_corpus() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/messages-real.jsonl"
        );
        let corpus = std::fs::read_to_string(path).expect("read the message corpus");
        let options = ChannelOptions {
            text_words: true,
            max_per_message: 10_000,
        };
        let mut messages = 0;

        for (index, line) in corpus.lines().enumerate() {
            let line_number = index + 1;
            let message: serde_json::Value =
                serde_json::from_str(line).expect("parse a corpus line");
            let field = |name: &str| message.get(name).and_then(serde_json::Value::as_str);
            let input = ChannelInput {
                source_type: field("source_type"),
                screen_name: field("screen_name"),
                text: field("text"),
                country_code: field("place_country_code"),
                ..ChannelInput::default()
            };

            let channels = derive(&input, &options);
            messages += 1;

            assert_eq!(
                channels.topics.first().map(String::as_str),
                Some("all"),
                "line {line_number}"
            );
            for topic in &channels.topics {
                assert_eq!(
                    crate::topic::validate_topic(topic),
                    Ok(()),
                    "line {line_number}: topic {topic:?}"
                );
                for level in topic.split('/') {
                    assert!(
                        !level.is_empty(),
                        "line {line_number}: empty level in {topic:?}"
                    );
                    assert!(
                        !level.chars().any(char::is_uppercase),
                        "line {line_number}: upper case in {topic:?}"
                    );
                    assert!(
                        level.len() <= MAX_LEVEL_BYTES,
                        "line {line_number}: long level in {topic:?}"
                    );
                }
            }
        }

        assert_eq!(messages, 6643, "corpus line count");
    }
}
