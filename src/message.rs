//! Messages: parsing an ingest payload into JSON objects and turning one into a dump line.
//!
//! A payload is one object, an array of objects, or `{"statuses": [...]}`. It is accepted or
//! rejected as a whole, so a collector never has to find out which half of a batch went
//! through. Unknown fields are kept byte for byte: a dump line is the object as received,
//! with a `stream_id` field added and raw line breaks turned into spaces.

use std::borrow::Cow;

use bytes::Bytes;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channels::ChannelInput;
use crate::stats::RejectReason;

/// Size limits from `stream.message.max_bytes` and `stream.batch.max_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub message_max_bytes: usize,
    pub batch_max_bytes: usize,
}

/// Why a payload was rejected, with the index of the offending message in a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    pub index: Option<usize>,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
            index: None,
        }
    }

    fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self.detail = format!("message {index}: {}", self.detail);
        self
    }
}

/// One message of a payload, borrowing from it.
#[derive(Debug)]
pub struct Message<'a> {
    raw: &'a str,
    /// The top-level fields with their values as received, when the message already has a
    /// `stream_id` (a replayed dump line) that the new id must replace in place.
    fields_in_order: Option<IndexMap<String, Box<RawValue>>>,
    pub source_type: Option<Cow<'a, str>>,
    pub id_str: Option<Cow<'a, str>>,
    pub text: Option<Cow<'a, str>>,
    pub screen_name: Option<Cow<'a, str>>,
    pub country_code: Option<Cow<'a, str>>,
    pub hashtags: Vec<Cow<'a, str>>,
    pub mentions: Vec<Cow<'a, str>>,
}

/// The fields the server reads; everything else stays in the raw text untouched.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    source_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id_str: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    screen_name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    place_country_code: Option<&'a RawValue>,
    #[serde(borrow, default)]
    hashtags: Option<&'a RawValue>,
    #[serde(borrow, default)]
    mentions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    statuses: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct User<'a> {
    #[serde(borrow, default)]
    screen_name: Option<&'a RawValue>,
}

/// Splits a payload into messages, or rejects it whole.
pub fn parse_payload<'a>(payload: &'a [u8], limits: &Limits) -> Result<Vec<Message<'a>>, Rejection> {
    if payload.len() > limits.batch_max_bytes {
        return Err(Rejection::new(
            RejectReason::PayloadTooLarge,
            format!(
                "payload is {} bytes, more than the maximum of {} (stream.batch.max_bytes)",
                payload.len(),
                limits.batch_max_bytes
            ),
        ));
    }

    let text = std::str::from_utf8(payload).map_err(|error| {
        Rejection::new(
            RejectReason::InvalidUtf8,
            format!("payload is not valid UTF-8 at byte {}", error.valid_up_to()),
        )
    })?;
    let trimmed = text.trim();

    match trimmed.as_bytes().first() {
        None => Err(Rejection::new(RejectReason::InvalidJson, "payload is empty")),
        Some(b'[') => {
            let elements: Vec<&RawValue> = serde_json::from_str(trimmed).map_err(invalid_json)?;
            parse_elements(&elements, limits)
        }
        Some(b'{') => {
            let fields: Fields<'a> = serde_json::from_str(trimmed).map_err(invalid_json)?;
            if let Some(statuses) = fields.statuses.filter(|raw| raw.get().starts_with('[')) {
                let elements: Vec<&RawValue> =
                    serde_json::from_str(statuses.get()).map_err(invalid_json)?;
                return parse_elements(&elements, limits);
            }
            check_size(trimmed, limits)?;
            Ok(vec![Message::from_fields(trimmed, fields)?])
        }
        Some(_) => match serde_json::from_str::<&RawValue>(trimmed) {
            Ok(_) => Err(Rejection::new(
                RejectReason::NotObject,
                "payload must be a JSON object, an array of objects or {\"statuses\": [...]}",
            )),
            Err(error) => Err(invalid_json(error)),
        },
    }
}

fn parse_elements<'a>(elements: &[&'a RawValue], limits: &Limits) -> Result<Vec<Message<'a>>, Rejection> {
    elements
        .iter()
        .enumerate()
        .map(|(index, raw)| Message::parse(raw.get(), limits).map_err(|rejection| rejection.at(index)))
        .collect()
}

fn check_size(raw: &str, limits: &Limits) -> Result<(), Rejection> {
    if raw.len() > limits.message_max_bytes {
        return Err(Rejection::new(
            RejectReason::MessageTooLarge,
            format!(
                "message is {} bytes, more than the maximum of {} (stream.message.max_bytes)",
                raw.len(),
                limits.message_max_bytes
            ),
        ));
    }
    Ok(())
}

fn invalid_json(error: serde_json::Error) -> Rejection {
    Rejection::new(RejectReason::InvalidJson, format!("invalid JSON: {error}"))
}

impl<'a> Message<'a> {
    /// Parses one object of a batch.
    fn parse(raw: &'a str, limits: &Limits) -> Result<Self, Rejection> {
        let raw = raw.trim();
        if !raw.starts_with('{') {
            return Err(Rejection::new(RejectReason::NotObject, "message must be a JSON object"));
        }
        check_size(raw, limits)?;
        let fields: Fields<'a> = serde_json::from_str(raw).map_err(invalid_json)?;
        Message::from_fields(raw, fields)
    }

    fn from_fields(raw: &'a str, fields: Fields<'a>) -> Result<Self, Rejection> {
        let mut screen_name = string_field(fields.screen_name, "screen_name", false)?;
        if screen_name.is_none() {
            if let Some(user) = fields.user.filter(|raw| raw.get().starts_with('{')) {
                let user: User<'a> = serde_json::from_str(user.get()).map_err(invalid_json)?;
                screen_name = string_field(user.screen_name, "user.screen_name", false)?;
            }
        }

        // The text search also catches `"stream_id": null`, which `Option` reads as absent.
        let fields_in_order = if fields.stream_id.is_some() || raw.contains("\"stream_id\"") {
            Some(serde_json::from_str(raw).map_err(invalid_json)?)
        } else {
            None
        };

        Ok(Message {
            raw,
            fields_in_order,
            source_type: string_field(fields.source_type, "source_type", false)?,
            id_str: string_field(fields.id_str, "id_str", true)?,
            text: string_field(fields.text, "text", false)?,
            screen_name,
            country_code: string_field(fields.place_country_code, "place_country_code", false)?,
            hashtags: string_list(fields.hashtags),
            mentions: string_list(fields.mentions),
        })
    }

    /// Returns the fields channels are derived from.
    pub fn channel_input(&self) -> ChannelInput<'_> {
        ChannelInput {
            source_type: self.source_type.as_deref(),
            screen_name: self.screen_name.as_deref(),
            text: self.text.as_deref(),
            hashtags: self.hashtags.iter().map(|tag| tag.as_ref()).collect(),
            mentions: self.mentions.iter().map(|name| name.as_ref()).collect(),
            country_code: self.country_code.as_deref(),
        }
    }

    /// Builds the message's dump line (no trailing newline) carrying `stream_id`.
    ///
    /// JSON strings cannot hold raw CR or LF, so raw line breaks are insignificant
    /// whitespace and become spaces.
    pub fn to_line(&self, stream_id: u64) -> Bytes {
        let mut line = match &self.fields_in_order {
            Some(fields) => replace_stream_id(fields, stream_id),
            None => append_stream_id(self.raw, stream_id),
        };
        if line.contains(['\r', '\n']) {
            line = line.replace(['\r', '\n'], " ");
        }
        Bytes::from(line)
    }
}

/// Returns the object text (ending with '}') with `"stream_id":"ID"` added as its last field.
fn append_stream_id(raw: &str, stream_id: u64) -> String {
    let body = raw[..raw.len() - 1].trim_end();
    let mut line = String::with_capacity(raw.len() + 40);
    line.push_str(body);
    if body != "{" {
        line.push(',');
    }
    line.push_str("\"stream_id\":\"");
    line.push_str(&stream_id.to_string());
    line.push_str("\"}");
    line
}

/// Rebuilds the object with the new id in place of the old one. Every other value is
/// copied as received, so numbers such as `4.000` or `1e400` keep their exact text.
fn replace_stream_id(fields: &IndexMap<String, Box<RawValue>>, stream_id: u64) -> String {
    let mut line = String::from("{");
    for (index, (key, value)) in fields.iter().enumerate() {
        if index > 0 {
            line.push(',');
        }
        // Serialising a string cannot fail.
        line.push_str(&serde_json::to_string(key).unwrap_or_default());
        line.push(':');
        if key == "stream_id" {
            line.push_str(&format!("\"{stream_id}\""));
        } else {
            line.push_str(value.get());
        }
    }
    line.push('}');
    line
}

impl Message<'_> {
}

/// Reads a string field; `id_str` also takes a number, which some collectors send.
fn string_field<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
    allow_number: bool,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let text = raw.get();
    if text.starts_with('"') {
        return parse_string(text)
            .map(Some)
            .map_err(|error| Rejection::new(RejectReason::InvalidField, format!("field '{name}': {error}")));
    }
    if text == "null" {
        return Ok(None);
    }
    if allow_number && text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Ok(Some(Cow::Borrowed(text)));
    }
    Err(Rejection::new(
        RejectReason::InvalidField,
        format!("field '{name}' must be a string"),
    ))
}

/// Decodes a JSON string, borrowing when it has no escapes.
fn parse_string(text: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    match serde_json::from_str::<&str>(text) {
        Ok(borrowed) => Ok(Cow::Borrowed(borrowed)),
        Err(_) => serde_json::from_str::<String>(text).map(Cow::Owned),
    }
}

/// Entries of a `hashtags` or `mentions` array: strings, or entity objects with `text`.
/// Entries of other shapes are skipped, not rejected: these arrays only add channels.
fn string_list(raw: Option<&RawValue>) -> Vec<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Entity<'a> {
        #[serde(borrow, default)]
        text: Option<&'a RawValue>,
    }

    let Some(raw) = raw.filter(|raw| raw.get().starts_with('[')) else {
        return Vec::new();
    };
    let Ok(entries) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let text = entry.get();
            if text.starts_with('"') {
                return parse_string(text).ok();
            }
            let entity: Entity<'_> = serde_json::from_str(text).ok()?;
            parse_string(entity.text?.get()).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        message_max_bytes: 1024,
        batch_max_bytes: 4096,
    };

    fn reason(payload: &[u8]) -> RejectReason {
        parse_payload(payload, &LIMITS).unwrap_err().reason
    }

    #[test]
    fn single_object_is_one_message() {
        let messages = parse_payload(br#"{"id_str":"1","text":"hi"}"#, &LIMITS).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].id_str.as_deref(), Some("1"));
        assert_eq!(messages[0].text.as_deref(), Some("hi"));
    }

    #[test]
    fn array_and_statuses_wrapper_are_batches() {
        let array = parse_payload(br#"[{"id_str":"1"},{"id_str":"2"}]"#, &LIMITS).unwrap();
        assert_eq!(array.len(), 2);
        let wrapped =
            parse_payload(br#"{"search_metadata":{},"statuses":[{"id_str":"1"}]}"#, &LIMITS).unwrap();
        assert_eq!(wrapped.len(), 1);
        assert_eq!(wrapped[0].id_str.as_deref(), Some("1"));
    }

    #[test]
    fn bad_payloads_get_their_reason() {
        assert_eq!(reason(b"{\"text\":\"\xff\"}"), RejectReason::InvalidUtf8);
        assert_eq!(reason(b"{\"text\":"), RejectReason::InvalidJson);
        assert_eq!(reason(b""), RejectReason::InvalidJson);
        assert_eq!(reason(b"{} trailing"), RejectReason::InvalidJson);
        assert_eq!(reason(b"42"), RejectReason::NotObject);
        assert_eq!(reason(b"\"text\""), RejectReason::NotObject);
        assert_eq!(reason(b"[{\"a\":1}, 7]"), RejectReason::NotObject);
        assert_eq!(reason(br#"{"text":5}"#), RejectReason::InvalidField);
        assert_eq!(reason(br#"{"text":"\ud800"}"#), RejectReason::InvalidField);
    }

    #[test]
    fn oversized_message_and_payload_are_rejected() {
        let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(2000));
        assert_eq!(reason(big.as_bytes()), RejectReason::MessageTooLarge);
        let huge = format!(r#"{{"text":"{}"}}"#, "x".repeat(5000));
        assert_eq!(reason(huge.as_bytes()), RejectReason::PayloadTooLarge);
    }

    #[test]
    fn rejection_names_the_message_index() {
        let rejection = parse_payload(br#"[{"a":1},[]]"#, &LIMITS).unwrap_err();
        assert_eq!(rejection.index, Some(1));
        assert!(rejection.detail.starts_with("message 1:"), "{}", rejection.detail);
    }

    #[test]
    fn line_keeps_fields_and_adds_stream_id() {
        let messages = parse_payload(br#"{"b":1, "a":"x"}"#, &LIMITS).unwrap();
        let line = messages[0].to_line(42);
        assert_eq!(&line[..], br#"{"b":1, "a":"x","stream_id":"42"}"#);
    }

    #[test]
    fn pretty_printed_object_becomes_one_line() {
        let messages = parse_payload(b"{\r\n  \"text\": \"a\\nb\"\n}\n", &LIMITS).unwrap();
        let line = messages[0].to_line(7);
        assert!(!line.contains(&b'\n'), "no LF in the line");
        assert!(!line.contains(&b'\r'), "no CR in the line");
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["text"], "a\nb");
        assert_eq!(value["stream_id"], "7");
    }

    #[test]
    fn empty_object_gets_stream_id() {
        let messages = parse_payload(b"{ }", &LIMITS).unwrap();
        assert_eq!(&messages[0].to_line(1)[..], br#"{"stream_id":"1"}"#);
    }

    #[test]
    fn existing_stream_id_is_replaced_in_place() {
        let messages = parse_payload(br#"{"a":1,"stream_id":"9","z":2}"#, &LIMITS).unwrap();
        assert_eq!(&messages[0].to_line(10)[..], br#"{"a":1,"stream_id":"10","z":2}"#);
    }

    #[test]
    fn replaced_stream_id_keeps_other_values_exactly() {
        let payload = br#"{"n":4.000,"big":123456789012345678901234567890,"stream_id":"1","x":"\ud800"}"#;
        let messages = parse_payload(payload, &LIMITS).unwrap();
        assert_eq!(
            &messages[0].to_line(2)[..],
            br#"{"n":4.000,"big":123456789012345678901234567890,"stream_id":"2","x":"\ud800"}"#
        );
    }

    #[test]
    fn null_stream_id_is_replaced_not_repeated() {
        let messages = parse_payload(br#"{"stream_id":null,"a":1}"#, &LIMITS).unwrap();
        assert_eq!(&messages[0].to_line(5)[..], br#"{"stream_id":"5","a":1}"#);
    }

    #[test]
    fn screen_name_falls_back_to_user_object() {
        let messages = parse_payload(br#"{"user":{"screen_name":"alice"}}"#, &LIMITS).unwrap();
        assert_eq!(messages[0].screen_name.as_deref(), Some("alice"));
    }

    #[test]
    fn numeric_id_str_is_accepted() {
        let messages = parse_payload(br#"{"id_str":123}"#, &LIMITS).unwrap();
        assert_eq!(messages[0].id_str.as_deref(), Some("123"));
    }

    #[test]
    fn hashtag_arrays_take_strings_and_entities() {
        let messages =
            parse_payload(br#"{"hashtags":["a",{"text":"b"},5],"mentions":["c"]}"#, &LIMITS).unwrap();
        let tags: Vec<&str> = messages[0].hashtags.iter().map(|t| t.as_ref()).collect();
        assert_eq!(tags, ["a", "b"]);
        assert_eq!(messages[0].mentions.len(), 1);
    }
}
