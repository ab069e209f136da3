//! The JSON text of answers: a found record with its stored value spliced in verbatim, and
//! plain JSON bodies.

use crate::error::ApiError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ravel_core::command::Record;
use serde_json::value::RawValue;

/// The JSON text of a found record, splicing the stored value text in verbatim:
/// `{"key":K,"<value_field>":V,"version":N}`.
pub fn record_json(key: &str, value_field: &str, record: &Record) -> Result<String, ApiError> {
    let value = std::str::from_utf8(&record.value)
        .map_err(|_| ApiError::internal("a stored value is not UTF-8 JSON text"))?;
    // Never emit a broken document, even if a node returned garbage.
    serde_json::from_str::<&RawValue>(value)
        .map_err(|_| ApiError::internal("a stored value is not valid JSON text"))?;
    let key_json = serde_json::Value::from(key).to_string();
    Ok(format!(
        "{{\"key\":{key_json},\"{value_field}\":{value},\"version\":{}}}",
        record.version
    ))
}

pub(super) fn json_text(text: String) -> Response {
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn json_value(value: &serde_json::Value) -> Response {
    json_text(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::code_of;
    use crate::http::{parse_put_body, parse_value_body};

    /// Every JSON type survives parse → store → response byte for byte, in both APIs.
    #[test]
    fn values_round_trip_exactly() {
        let values = [
            "1.0",
            "-0",
            "1e400",
            "12345678901234567890123",
            "\"str \\u00e9 \\n\"",
            "\"\"",
            "true",
            "false",
            "null",
            "{\"b\":1,\"a\":2}",
            "{ \"nested\" : [ 1 , {\"x\" : null} ] }",
            "[]",
            "[1,\"two\",3.50]",
        ];
        for v in values {
            let body = format!(r#"{{"key":"k","val":{v}}}"#);
            let (_, raw) = parse_put_body(body.as_bytes()).unwrap();
            assert_eq!(raw.get(), v);
            let body = format!(" \n{v}\t ");
            let whole = parse_value_body(body.as_bytes()).unwrap();
            assert_eq!(whole.get(), v);

            let record = Record {
                version: 3,
                value: raw.get().as_bytes().to_vec(),
            };
            let legacy = record_json("k/é", "val", &record).unwrap();
            assert_eq!(legacy, format!(r#"{{"key":"k/é","val":{v},"version":3}}"#));
            let modern = record_json("k", "value", &record).unwrap();
            assert_eq!(modern, format!(r#"{{"key":"k","value":{v},"version":3}}"#));
            // The spliced document is valid JSON.
            serde_json::from_str::<serde::de::IgnoredAny>(&modern).unwrap();
        }
        let garbage = Record {
            version: 1,
            value: b"{oops".to_vec(),
        };
        assert_eq!(code_of(record_json("k", "val", &garbage)), "internal");
    }
}
