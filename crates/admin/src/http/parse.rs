//! Parsing and validation of what a request carries: the legacy JSON bodies, whole-body values,
//! keys (body or path) and the `cas` and `consistency` query parameters.

use crate::error::ApiError;
use crate::json_depth;
use axum::extract::{Path, Query};
use ravel_core::limits;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// Deserializes a present field as `Some(raw)`, even when it is JSON `null` (a plain
/// `Option<&RawValue>` would turn `null` into `None`).
fn present<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

/// The fields of the legacy JSON bodies, each kept as raw JSON until validated.
#[derive(Deserialize)]
struct LegacyBody<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    key: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    val: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    value: Option<&'a RawValue>,
}

fn parse_legacy(body: &[u8]) -> Result<LegacyBody<'_>, ApiError> {
    // serde would also accept a JSON array as a struct (by position); the contract is an object.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::malformed_json("the body must be a JSON object"));
    }
    serde_json::from_slice::<LegacyBody<'_>>(body).map_err(ApiError::malformed_json)
}

/// Checks a key against the contract: non-empty and at most [`limits::MAX_KEY_BYTES`].
pub fn check_key(key: String) -> Result<String, ApiError> {
    if key.is_empty() {
        return Err(ApiError::empty_key());
    }
    if key.len() > limits::MAX_KEY_BYTES {
        return Err(ApiError::key_too_large(key.len()));
    }
    Ok(key)
}

fn key_of(raw: Option<&RawValue>) -> Result<String, ApiError> {
    let raw = raw.ok_or_else(ApiError::missing_key)?;
    let key: String = serde_json::from_str(raw.get()).map_err(|_| ApiError::invalid_key())?;
    check_key(key)
}

/// Checks a value against the contract: at most [`limits::MAX_VALUE_BYTES`] of JSON text, nested
/// at most [`limits::MAX_JSON_DEPTH`] deep.
fn check_value(raw: &RawValue) -> Result<&RawValue, ApiError> {
    let len = raw.get().len();
    if len > limits::MAX_VALUE_BYTES {
        return Err(ApiError::value_too_large(len));
    }
    let depth = json_depth::nesting_depth(raw.get().as_bytes());
    if depth > limits::MAX_JSON_DEPTH {
        return Err(ApiError::too_deeply_nested(depth));
    }
    Ok(raw)
}

/// Parses a `/put` body: `{"key": K, "val": V}` (or `"value": V`). Returns the key and the
/// value's exact JSON text.
pub fn parse_put_body(body: &[u8]) -> Result<(String, &RawValue), ApiError> {
    let parsed = parse_legacy(body)?;
    let key = key_of(parsed.key)?;
    let value = parsed
        .val
        .or(parsed.value)
        .ok_or_else(ApiError::missing_value)?;
    Ok((key, check_value(value)?))
}

/// Parses a `/get` or `/delete` body: `{"key": K}`.
pub fn parse_key_body(body: &[u8]) -> Result<String, ApiError> {
    key_of(parse_legacy(body)?.key)
}

/// Parses a whole body as one JSON value (`PUT /v1/kv/{key}`), returning its exact text.
pub fn parse_value_body(body: &[u8]) -> Result<&RawValue, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::missing_value());
    }
    let raw: &RawValue = serde_json::from_slice(body).map_err(ApiError::malformed_json)?;
    check_value(raw)
}

/// Parses the `cas` query parameter, if present.
pub fn parse_cas(query: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    query
        .get("cas")
        .map(|raw| raw.parse::<u64>().map_err(|_| ApiError::invalid_cas(raw)))
        .transpose()
}

/// Parses the `consistency` query parameter: true for `stale`.
pub fn parse_stale(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("consistency").map(String::as_str) {
        None | Some("linearizable") => Ok(false),
        Some("stale") => Ok(true),
        Some(other) => Err(ApiError::invalid_consistency(other)),
    }
}

pub(super) type QueryMap =
    Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;
pub(super) type KeyPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

pub(super) fn query_of(query: QueryMap) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("malformed_query", e.body_text()))
}

pub(super) fn path_key(path: KeyPath) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|_| ApiError::invalid_key())?;
    check_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{code_of, nested_array};

    /// Every validation failure of the legacy bodies gets its own stable code.
    #[test]
    fn legacy_body_validation_codes() {
        assert_eq!(code_of(parse_put_body(b"")), "malformed_json");
        assert_eq!(code_of(parse_put_body(b"{\"key\":")), "malformed_json");
        assert_eq!(code_of(parse_put_body(b"[1,2]")), "malformed_json");
        assert_eq!(code_of(parse_put_body(br#"{"val":1}"#)), "missing_key");
        assert_eq!(
            code_of(parse_put_body(br#"{"key":"","val":1}"#)),
            "empty_key"
        );
        assert_eq!(
            code_of(parse_put_body(br#"{"key":5,"val":1}"#)),
            "invalid_key"
        );
        assert_eq!(
            code_of(parse_put_body(br#"{"key":{"a":1},"val":1}"#)),
            "invalid_key"
        );
        assert_eq!(
            code_of(parse_put_body(br#"{"key":null,"val":1}"#)),
            "invalid_key"
        );
        assert_eq!(code_of(parse_put_body(br#"{"key":"k"}"#)), "missing_value");
        assert_eq!(code_of(parse_key_body(br#"{}"#)), "missing_key");
        assert_eq!(code_of(parse_key_body(br#"{"key":[]}"#)), "invalid_key");

        let long_key = "k".repeat(limits::MAX_KEY_BYTES + 1);
        let body = format!(r#"{{"key":"{long_key}","val":1}}"#);
        let err = parse_put_body(body.as_bytes()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (413, "key_too_large"));
        let ok_key = "k".repeat(limits::MAX_KEY_BYTES);
        let body = format!(r#"{{"key":"{ok_key}","val":1}}"#);
        assert_eq!(parse_put_body(body.as_bytes()).unwrap().0, ok_key);

        let big = format!("\"{}\"", "v".repeat(limits::MAX_VALUE_BYTES));
        let body = format!(r#"{{"key":"k","val":{big}}}"#);
        let err = parse_put_body(body.as_bytes()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (413, "value_too_large"));
        assert_eq!(code_of(parse_value_body(big.as_bytes())), "value_too_large");

        assert_eq!(code_of(parse_value_body(b"")), "missing_value");
        assert_eq!(code_of(parse_value_body(b"  \n")), "missing_value");
        assert_eq!(code_of(parse_value_body(b"{\"a\":")), "malformed_json");
        assert_eq!(code_of(parse_value_body(b"1 2")), "malformed_json");
    }

    /// A JSON `null` value is a value, `"value"` is an alias of `"val"`, and keys may be any
    /// JSON string (escapes decoded).
    #[test]
    fn legacy_body_accepts_null_alias_and_escapes() {
        let (key, val) = parse_put_body(br#"{"key":"a\"b\u00e9","val":null}"#).unwrap();
        assert_eq!(key, "a\"b\u{e9}");
        assert_eq!(val.get(), "null");
        let (_, val) = parse_put_body(br#"{"key":"k","value":[1, 2]}"#).unwrap();
        assert_eq!(val.get(), "[1, 2]");
        let (_, val) = parse_put_body(br#"{"key":"k","val":"x","value":"y"}"#).unwrap();
        assert_eq!(val.get(), "\"x\"");
        assert_eq!(parse_key_body(br#"{"key":"k","extra":true}"#).unwrap(), "k");
    }

    /// Query parameters: cas must be a u64, consistency linearizable or stale.
    #[test]
    fn query_validation() {
        let q = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(parse_cas(&HashMap::new()).unwrap(), None);
        assert_eq!(parse_cas(&q("cas", "0")).unwrap(), Some(0));
        assert_eq!(
            parse_cas(&q("cas", "18446744073709551615")).unwrap(),
            Some(u64::MAX)
        );
        assert_eq!(code_of(parse_cas(&q("cas", "-1"))), "invalid_cas");
        assert_eq!(code_of(parse_cas(&q("cas", "x"))), "invalid_cas");
        assert_eq!(code_of(parse_cas(&q("cas", ""))), "invalid_cas");
        assert!(!parse_stale(&HashMap::new()).unwrap());
        assert!(!parse_stale(&q("consistency", "linearizable")).unwrap());
        assert!(parse_stale(&q("consistency", "stale")).unwrap());
        assert_eq!(
            code_of(parse_stale(&q("consistency", "eventual"))),
            "invalid_consistency"
        );
    }

    /// A value nested exactly [`limits::MAX_JSON_DEPTH`] deep is accepted on both write bodies;
    /// one level more (arrays or objects) is refused with 400 `too_deeply_nested`, and brackets
    /// inside strings do not count.
    #[test]
    fn nesting_depth_limit_on_values() {
        let max = limits::MAX_JSON_DEPTH;
        let at_limit = nested_array(max);
        assert_eq!(
            parse_value_body(at_limit.as_bytes()).unwrap().get(),
            at_limit
        );
        let body = format!(r#"{{"key":"k","val":{at_limit}}}"#);
        assert_eq!(parse_put_body(body.as_bytes()).unwrap().1.get(), at_limit);

        let over = nested_array(max + 1);
        let err = parse_value_body(over.as_bytes()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (400, "too_deeply_nested"));
        assert!(
            err.message.contains(&(max + 1).to_string()),
            "{}",
            err.message
        );
        let body = format!(r#"{{"key":"k","value":{over}}}"#);
        assert_eq!(
            code_of(parse_put_body(body.as_bytes())),
            "too_deeply_nested"
        );

        let objects = format!("{}1{}", r#"{"a":"#.repeat(max + 1), "}".repeat(max + 1));
        assert_eq!(
            code_of(parse_value_body(objects.as_bytes())),
            "too_deeply_nested"
        );
        let brackets_in_string = format!(r#"["{}"]"#, "[".repeat(max * 2));
        assert!(parse_value_body(brackets_in_string.as_bytes()).is_ok());
    }
}
