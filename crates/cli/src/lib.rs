//! The client commands of `ravel_admin` — `status`, `get`, `put`, `delete` and `probe` — for a
//! terminal or a script. They speak the admins' HTTP API (the same one any client uses) through
//! [`Client`], which tries the `--endpoints` in order, and print either a table for a person or
//! the API's JSON for a script (`-o json`).
//!
//! Failing over to the next endpoint is only done when the request certainly did not reach the
//! admin (the connection could not be made), or for reads: a write that timed out may have been
//! applied, and sending it again to another admin would apply it twice.

pub mod client;
pub mod render;

use serde_json::Value;

pub use client::{Answer, CliError, Client};

/// Default admin endpoint when neither `--endpoints` nor `RAVEL_ENDPOINTS` is given.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";

/// Default bound of one request to one endpoint (`--timeout-ms`): above the admin's own route
/// budget, so that the admin's answer (503/504) arrives before the client gives up.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Default bound of a `probe` (`--timeout-ms`): a health check must answer quickly.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 2_000;

/// How a command prints its answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for a person.
    #[default]
    Table,
    /// The API's JSON, one document, for scripts (`jq`).
    Json,
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Output::Table),
            "json" => Ok(Output::Json),
            other => Err(format!(
                "unknown output format {other:?} (expected table or json)"
            )),
        }
    }
}

/// How a `put` value given on the command line becomes the stored JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueSyntax {
    /// Valid JSON is stored as that JSON value (`42`, `true`, `{"a":1}`, `"quoted"`); anything
    /// else as a JSON string (`hello` → `"hello"`).
    JsonOrString,
    /// Always a JSON string, even when the text parses as JSON (`--string 42` → `"42"`).
    String,
}

/// The JSON value a `put` stores for `text`.
pub fn parse_value(text: &str, syntax: ValueSyntax) -> Value {
    match syntax {
        ValueSyntax::String => Value::String(text.to_owned()),
        ValueSyntax::JsonOrString => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
    }
}

/// The request path of key `key` under `/v1/kv/`, each byte outside the unreserved set and `/`
/// percent-encoded (so keys with spaces, `?`, `#` or non-ASCII text travel intact).
pub fn kv_path(key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    format!(
        "/v1/kv/{}",
        percent_encoding::utf8_percent_encode(key, KEEP)
    )
}

/// `?cas=N` when a compare-and-set version was given.
fn cas_query(cas: Option<u64>) -> String {
    cas.map_or_else(String::new, |n| format!("?cas={n}"))
}

/// `ravel_admin status`: the cluster view.
pub async fn status(client: &Client, output: Output) -> Result<String, CliError> {
    let view = client.get("/v1/cluster").await?.into_success()?;
    Ok(match output {
        Output::Json => pretty(&view),
        Output::Table => render::status_table(&view),
    })
}

/// `ravel_admin get KEY`: the value, linearizable unless `stale`.
pub async fn get(
    client: &Client,
    key: &str,
    stale: bool,
    output: Output,
) -> Result<String, CliError> {
    let query = if stale { "?consistency=stale" } else { "" };
    let answer = client
        .get(&format!("{}{query}", kv_path(key)))
        .await?
        .into_success()?;
    Ok(match output {
        Output::Json => pretty(&answer),
        Output::Table => render::table(
            &["KEY", "VERSION", "VALUE"],
            &[vec![
                key.to_owned(),
                answer["version"].to_string(),
                answer["value"].to_string(),
            ]],
        ),
    })
}

/// `ravel_admin put KEY VALUE`: stores `value`, only if the key's version is `cas` when given.
pub async fn put(
    client: &Client,
    key: &str,
    value: &Value,
    cas: Option<u64>,
    output: Output,
) -> Result<String, CliError> {
    let path = format!("{}{}", kv_path(key), cas_query(cas));
    let answer = client.put(&path, value).await?.into_success()?;
    Ok(match output {
        Output::Json => pretty(&answer),
        Output::Table => format!("OK version {}\n", answer["version"]),
    })
}

/// `ravel_admin delete KEY`: removes the key, only if its version is `cas` when given.
pub async fn delete(
    client: &Client,
    key: &str,
    cas: Option<u64>,
    output: Output,
) -> Result<String, CliError> {
    let path = format!("{}{}", kv_path(key), cas_query(cas));
    let answer = client.delete(&path).await?.into_success()?;
    Ok(match output {
        Output::Json => pretty(&answer),
        Output::Table if answer["deleted"] == Value::Bool(true) => "deleted\n".to_owned(),
        Output::Table => "not found: nothing deleted\n".to_owned(),
    })
}

/// `ravel_admin members add|remove GRPC`: adds the admin serving gRPC at `grpc` to the admin
/// group (`add`) or removes it; prints the voters after the change.
pub async fn change_admins(
    client: &Client,
    add: bool,
    grpc: &str,
    output: Output,
) -> Result<String, CliError> {
    let path = format!("/v1/admins/{grpc}");
    let answer = if add {
        client.put(&path, &Value::Null).await?
    } else {
        client.delete(&path).await?
    }
    .into_success()?;
    Ok(match output {
        Output::Json => pretty(&answer),
        Output::Table => format!(
            "{} {grpc}; voters now: {}\n",
            if add { "added" } else { "removed" },
            answer["voters"]
        ),
    })
}

/// `ravel_admin probe URL`: `Ok` with the body when `url` answers 2xx (a health check for
/// containers, whose images have no shell and no curl).
pub async fn probe(url: &str, timeout: std::time::Duration) -> Result<String, CliError> {
    let answer = Client::single(url, timeout)?.get("").await?;
    if answer.status.is_success() {
        Ok(format!("{} {}\n", answer.status.as_u16(), answer.body))
    } else {
        Err(answer.into_error())
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command-line value is JSON when it parses, else a string; `--string` forces a string.
    #[test]
    fn values_are_json_when_they_parse() {
        assert_eq!(
            parse_value("42", ValueSyntax::JsonOrString),
            Value::from(42)
        );
        assert_eq!(
            parse_value("{\"a\":[1,2]}", ValueSyntax::JsonOrString),
            serde_json::json!({"a": [1, 2]})
        );
        assert_eq!(
            parse_value("hello world", ValueSyntax::JsonOrString),
            Value::from("hello world")
        );
        assert_eq!(parse_value("42", ValueSyntax::String), Value::from("42"));
    }

    /// Keys are percent-encoded in the path except for unreserved bytes and `/`.
    #[test]
    fn keys_are_encoded_into_the_path() {
        assert_eq!(kv_path("user/42"), "/v1/kv/user/42");
        assert_eq!(kv_path("a b?c#d"), "/v1/kv/a%20b%3Fc%23d");
        assert_eq!(kv_path("clé"), "/v1/kv/cl%C3%A9");
    }
}
