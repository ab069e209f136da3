//! An HTTP client over a list of admin endpoints: each request goes to the first endpoint that
//! takes it; the next endpoint is tried only when the request certainly was not sent (the
//! connection failed) or when it is a read. Answers keep their status and JSON body, and an
//! error answer becomes [`CliError::Api`] with the API's `code` and message.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Longest wait for a TCP connection to one endpoint before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a command failed, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("bad endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("no admin answered: {}", .0.join("; "))]
    Unreachable(Vec<String>),
    #[error("{endpoint} may have applied the request but did not answer: {reason}")]
    OutcomeUnknown { endpoint: String, reason: String },
    #[error("{message} ({status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
        body: Value,
    },
}

impl CliError {
    /// The JSON to print for `-o json`: the API's own error body when there is one.
    pub fn to_json(&self) -> Value {
        match self {
            CliError::Api { body, .. } if body.is_object() => body.clone(),
            other => serde_json::json!({"error": other.to_string(), "code": other.code()}),
        }
    }

    /// A stable snake_case code.
    pub fn code(&self) -> String {
        match self {
            CliError::BadEndpoint { .. } => "bad_endpoint".into(),
            CliError::Unreachable(_) => "unreachable".into(),
            CliError::OutcomeUnknown { .. } => "outcome_unknown".into(),
            CliError::Api { code, .. } => code.clone(),
        }
    }
}

/// One HTTP answer: status and body (JSON, or the text as a JSON string when it is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The body of a 2xx answer, or the answer as a [`CliError::Api`].
    pub fn into_success(self) -> Result<Value, CliError> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(self.into_error())
        }
    }

    /// The answer as an error, with the API's `code` and `error` message when it has them.
    pub fn into_error(self) -> CliError {
        let text = |field: &str| {
            self.body
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let message = text("error").unwrap_or_else(|| {
            format!(
                "{} {}",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("")
            )
        });
        CliError::Api {
            status: self.status.as_u16(),
            code: text("code").unwrap_or_else(|| "http_error".into()),
            message,
            body: self.body,
        }
    }
}

/// The admins' HTTP API at one or more endpoints.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for the comma-separated `endpoints` (`http://host:port`; a bare `host:port`
    /// gets `http://`), each request bounded by `timeout`.
    pub fn new(endpoints: &str, timeout: Duration) -> Result<Client, CliError> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(normalize)
            .collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err(CliError::BadEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given".into(),
            });
        }
        Self::build(endpoints, timeout)
    }

    /// A client for exactly `url`, paths appended to it as given.
    pub fn single(url: &str, timeout: Duration) -> Result<Client, CliError> {
        Self::build(vec![normalize(url)?], timeout)
    }

    fn build(endpoints: Vec<String>, timeout: Duration) -> Result<Client, CliError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| CliError::BadEndpoint {
                endpoint: endpoints.join(","),
                reason: e.to_string(),
            })?;
        Ok(Client { endpoints, http })
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub async fn get(&self, path: &str) -> Result<Answer, CliError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Answer, CliError> {
        self.send(Method::PUT, path, Some(body.to_string())).await
    }

    pub async fn delete(&self, path: &str) -> Result<Answer, CliError> {
        self.send(Method::DELETE, path, None).await
    }

    /// Sends to each endpoint in turn until one answers (see the module doc for when the next
    /// one may be tried).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Answer, CliError> {
        let idempotent = method == Method::GET;
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            let url = format!("{endpoint}{path}");
            let mut request = self.http.request(method.clone(), &url);
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            match request.send().await {
                Ok(response) => return Ok(read_answer(response).await),
                Err(e) if e.is_connect() || idempotent => {
                    failures.push(format!("{endpoint}: {}", describe(&e)));
                }
                Err(e) => {
                    return Err(CliError::OutcomeUnknown {
                        endpoint: endpoint.clone(),
                        reason: describe(&e),
                    });
                }
            }
        }
        Err(CliError::Unreachable(failures))
    }
}

async fn read_answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, body }
}

/// The innermost cause of a transport error: "connection refused", not just "error sending".
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        format!("timed out ({text})")
    } else {
        text
    }
}

fn normalize(endpoint: &str) -> Result<String, CliError> {
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    match reqwest::Url::parse(&with_scheme) {
        Ok(url) if url.scheme() == "http" => Ok(with_scheme.trim_end_matches('/').to_owned()),
        Ok(url) => Err(CliError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            reason: format!("scheme {:?} is not supported (use http://)", url.scheme()),
        }),
        Err(e) => Err(CliError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme_and_lose_trailing_slashes() {
        let c = Client::new(" 127.0.0.1:1 , http://h:2/ ", Duration::from_secs(1)).unwrap();
        assert_eq!(c.endpoints(), ["http://127.0.0.1:1", "http://h:2"]);
        assert!(matches!(
            Client::new("https://h:1", Duration::from_secs(1)),
            Err(CliError::BadEndpoint { .. })
        ));
        assert!(matches!(
            Client::new(" , ", Duration::from_secs(1)),
            Err(CliError::BadEndpoint { .. })
        ));
    }

    /// A dead endpoint is skipped: the request goes to the next one, which answers.
    #[tokio::test]
    async fn a_refused_connection_fails_over_to_the_next_endpoint() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/v1/kv/k",
            axum::routing::put(|| async { axum::Json(serde_json::json!({"version": 7})) }),
        );
        tokio::spawn(async move { axum::serve(live, app).await });
        let client =
            Client::new(&format!("{dead_addr},{live_addr}"), Duration::from_secs(2)).unwrap();
        let answer = client.put("/v1/kv/k", &Value::from(1)).await.unwrap();
        assert_eq!(answer.into_success().unwrap()["version"], 7);
        let err = Client::new(&dead_addr.to_string(), Duration::from_secs(2))
            .unwrap()
            .get("/v1/cluster")
            .await
            .unwrap_err();
        assert!(matches!(err, CliError::Unreachable(_)), "{err}");
    }

    /// An error answer keeps the API's code and message.
    #[test]
    fn error_answers_keep_the_api_code() {
        let answer = Answer {
            status: StatusCode::PRECONDITION_FAILED,
            body: serde_json::json!({"error": "version is 3", "code": "cas_mismatch"}),
        };
        let err = answer.into_error();
        assert_eq!(err.code(), "cas_mismatch");
        assert_eq!(err.to_string(), "version is 3 (412, cas_mismatch)");
    }
}
