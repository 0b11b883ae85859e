//! A minimal HTTP/1.1 call over one connection: enough for the admin API, the CLI and tests,
//! without a full HTTP client stack in the build.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::ClientError;
use crate::tls::ClientStream;

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The `host:port` of a base URL such as `http://127.0.0.1:8080`.
pub fn authority(base: &str) -> Result<String, ClientError> {
    let uri: hyper::Uri = base
        .parse()
        .map_err(|_| ClientError::InvalidAddress(base.into()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| ClientError::InvalidAddress(base.into()))?;
    Ok(authority.to_string())
}

/// [`call`], given up after `timeout` (connecting, sending and reading the whole answer):
/// `ClientError::Timeout` then.
pub async fn call_within(
    timeout: std::time::Duration,
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<HttpResponse, ClientError> {
    tokio::time::timeout(timeout, call(base, method, path, headers, body))
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// Sends one request to `base` (`http://host:port`) and reads the whole answer.
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<HttpResponse, ClientError> {
    let authority = authority(base)?;
    let uri: hyper::Uri = base
        .parse()
        .map_err(|_| ClientError::InvalidAddress(base.into()))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") | None => false,
        Some(_) => {
            return Err(ClientError::InvalidAddress(format!(
                "{base}: expected http:// or https://"
            )));
        }
    };
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    // The scheme's default port when the address names none; `Host` stays as given.
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await?;
    let stream = ClientStream::open(tcp, tls, host).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", &authority)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    driver.abort();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}
